//! A translator from RISC-V basic blocks to x86-64 code: the fast path of the hart.
//!
//! # Design
//!
//! The interpreter stays the reference: translated code runs only what it can run
//! *exactly* as the interpreter would, and hands everything else back.
//!
//! - A block is a run of RV64I and M integer instructions, and of the A, F, D and Zicsr
//!   instructions run through the helper (below), within one physical page, ending at a
//!   branch or jump, before the first instruction it does not translate, or at 64
//!   instructions. Block entries live in the decode cache's `BlockTable` (in `dcache`) of
//!   their page, so every event that drops decoded instructions (stores into code,
//!   eviction, flushes) drops blocks too. (Blocks that ran on through conditional
//!   branches were tried: on the rustc workload they translated 60% more guest
//!   instructions into 40% more code and ran no faster, 5% slower beside the store path
//!   below; see docs/performance.md.)
//! - Time: a block runs only if all of its instructions fit before `Hart::stop`
//!   (`mcycle + n <= stop`, checked on entry as `mcycle - stop <= -n`: translated code
//!   keeps that difference in a host register, so the check is a compare with an
//!   immediate), which is when the interpreter would have run all of them too: nothing a
//!   translated instruction does can move `stop`.
//! - Division follows RISC-V's table, not x86's faults: a zero divisor and the signed
//!   overflow (most negative / -1) are tested for and given their results before any
//!   `div`/`idiv` runs, so no host exception can happen.
//! - Traps never happen inside translated code. Loads and stores take an inline TLB hit
//!   path for accesses inside one page, aligned or not: loads from RAM and from the
//!   flash drives (an entry's delta leads to the page's host address, so both are
//!   `[va + delta]`; a guest copies its drives into its page cache with millions
//!   of loads), stores to RAM only through store-TLB entries that allow it: to pages
//!   already marked dirty for the state hash and holding no decoded code, see
//!   `mmu::TlbEntry::inline_tag`, so the inline store needs neither check; a misaligned
//!   access inside a page is one host access where the interpreter makes one per byte,
//!   through the same TLB entry, to the same effect. A load that misses it (a TLB miss,
//!   a device, an access across a page boundary) calls `load_helper`, which does what
//!   the interpreter's load does — page walks included, with `mcycle` advanced to the
//!   load's own count, since device reads see it — and the block goes on. The helper
//!   declines, changing nothing a re-execution would not change the same way, when the
//!   load faults or its page walk wrote into a page with decoded code (the running block
//!   might be stale); then the block leaves with `pc` at that instruction and `mcycle`
//!   counting the ones before it, and the interpreter executes it with every check.
//! - Atomics (LR, SC, AMOs) go inline when their address is aligned and the TLB entries
//!   the interpreter's `exec_a` would use hit on pages translated code may reach: LR
//!   loads and reserves (the reservation is a plain word of the hart,
//!   `NO_RESERVATION` when none is held), SC compares, stores through the store entry
//!   and drops the reservation (failing, it touches no memory), an AMO needs the store
//!   entry and the load entry both, reading through the one and writing through the
//!   other as the interpreter does. Anything else (misaligned, a miss, a device, a page
//!   with code) runs the whole instruction through `exec_helper`, below.
//! - The CSR instructions Linux runs most go inline (`compile::Block::csr`): reads and
//!   writes of the trap registers (`sscratch`, `sepc`, `scause`, `stval` and M's), reads
//!   of `sstatus`, and writes of it that set no SIE (clearing SIE, setting and clearing
//!   SUM: the data context's SUM and MXR bits follow `mstatus` in the same code), each
//!   after a privilege check; a write that sets SIE, or an access from too low a
//!   privilege, goes to the helper whole.
//! - Instructions with no translation of their own — floating point, the other CSR
//!   instructions — and stores and atomics that miss the inline path (a TLB miss, a
//!   device, a page boundary, a store into code) call `exec_helper`: the registers they name go to
//!   the hart, the interpreter's own `execute` runs them at their exact `pc` and
//!   `mcycle`, rd comes back. The block goes on unless the instruction trapped, moved
//!   `stop` (a device store, a write that enables an interrupt, a `satp` write; a
//!   status write that only disables or changes SUM does not), wrote into a page
//!   with decoded code or wrote `mcycle`: then the helper finishes the step as the
//!   interpreter's loop would (the trap taken, or `pc` past the instruction) and the
//!   block leaves, so whatever follows is fetched and checked anew.
//! - Guest registers: four (sp, a0, a1, ra: `compile::GLOBALS`) live in the same
//!   callee-saved host registers in every block, and so does `mcycle` (`compile::MCYCLE`):
//!   the trampoline loads them, chained blocks hand them on in place, the epilogue stores
//!   them back, and a helper call stores the ones its instruction names (and `mcycle`)
//!   first and reloads its rd (and `mcycle`) after. Each block
//!   keeps the others it uses most in the remaining host registers, loaded on entry and
//!   written back at every exit. A direct jump to the block's own start (a
//!   loop) stays in host registers; a jump elsewhere in the same page goes straight to
//!   the target block's code: directly when that block was translated first, else as a
//!   jump back to Rust that is patched to the target's code when it is translated (the
//!   decode cache keeps these links per page, `DecodeCache::links_to`, and patches them
//!   again if the target is translated anew). A store that drops a block while others
//!   of its page stay makes its code leave on entry before translated code runs again
//!   (`Hart::bury_dropped_blocks`); eviction drops the whole page, which only its own
//!   blocks jump into directly, and the region's reset drops everything. A jump to
//!   another page (or any `jalr`) chains through the fetch TLB, the decode cache's page
//!   map and that page's table — the lookups the interpreter's fetch makes, so code runs
//!   only from pages it could fetch from in the current context. On a fetch-TLB miss,
//!   when the interpreter's next step would be that fetch (an instruction fits before
//!   `stop`), `fetch_helper` makes the walk it would make and chaining goes on.
//! - Code size: the host's caches bound translated code as much as its instruction count
//!   does (the rustc workload runs ~16 K hot blocks; a larger translation ran slower). So
//!   the chaining lookup and the calls into `load_helper` and `exec_helper` (the `mcycle`
//!   store, the pool registers' saves, the call's set-up) are shared code the blocks
//!   `call` (`compile::Thunks`, placed once after the epilogue), and each block's slow
//!   paths (helper calls, exits to the interpreter) go to the cold half of the code
//!   region, apart from the code that runs.
//!   Taken jumps count too: a block's entry check falls through when it may run, and
//!   loads and stores keep their TLB lookup inline (shared, it cost a `call` and a `ret`
//!   per access and measured slower). Bytes count: the hart fields translated code uses
//!   most lie within a one-byte displacement of its hart pointer (`compile::BIAS`); the
//!   TLB lookup compares the tag of an access's last byte, so one compare also rules
//!   out page crossings; TLB entries hold the page's host address less its virtual
//!   address (`mmu::TlbEntry::delta`), so the host address is `delta + va` with no
//!   masking and nothing else to add; x0 is an immediate 0, never a load.
//!   (Tried and measured no faster, docs/performance.md: a jump cache in front of the
//!   chaining lookup, invalidated by every fetch-TLB fill and block drop, and again
//!   validated by the fetch TLB's entry, with 92 % hits; guest calls and returns as host
//!   `call`s and `ret`s, with 90 % of returns going straight on. Chaining costs the cache
//!   misses of targets not chained to lately, which neither removes.)
//! - What gets translated: a block start (a jump target, or the instruction after one no
//!   block holds) once it has been reached `HOT` times; colder code is interpreted.
//! - The code region is one memory object mapped twice, executable and writable, so no
//!   page is both at one address; blocks fill its first half, their slow paths the
//!   second, and when either is full both are emptied and translation starts over. A
//!   hart that is dropped leaves its region, emptied, to the next hart made in the process
//!   (`SPARE_CODE`; the decode cache does the same with its page buffers), so the sibling
//!   machines of a run do not each make the host zero new memory.
//!
//! The result is a pure cache: the same instructions retire with the same results at the
//! same `mcycle` with or without it, which the tests check (whole Linux boots included).

mod compile;
mod exec;
mod x86;

use super::dcache::{BLOCK_NONE, BLOCK_UNKNOWN};
use super::mmu::vpn;
use super::Hart;
use crate::bus::Bus;
use exec::ExecMem;
use std::sync::{Mutex, PoisonError};

/// Bytes reserved for translated code; when full, every block is dropped and
/// translation starts over.
const CODE_BYTES: usize = 256 << 20;

/// What translated code needs from outside the hart, refreshed before each entry.
/// `repr(C)`: translated code reads it at fixed offsets.
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
pub(super) struct Env {
    /// Host address of the decode cache's page map (`u32` per RAM page).
    slot_of: u64,
    /// Host address of the load TLB.
    load_tlb: u64,
    /// Host address of the store TLB.
    store_tlb: u64,
    /// Host address of the fetch TLB.
    fetch_tlb: u64,
    /// Host address of the decode cache's block-table addresses (`u64` per cache page).
    tables: u64,
    /// The `Bus` the hart runs on, for the helpers translated code calls.
    bus: u64,
}

/// What [`load_helper`] returns, in rax and rdx (sysv64 returns a 16-byte struct of
/// integers in that pair).
#[repr(C)]
pub(super) struct Loaded {
    /// The loaded value, zero-extended.
    value: u64,
    /// 1 if the load happened, 0 if the block must leave for the interpreter to run it.
    ok: u64,
}

/// Called by translated code to run one instruction it does not translate (`raw`, at
/// `delta` bytes past the block's start, after `retired` instructions of the block):
/// [`Hart::exec_for_jit`]. Returns 1 if the block goes on, 2 if it must leave (`pc`
/// and `mcycle` already set).
///
/// # Safety
///
/// As for [`load_helper`]; the registers the instruction reads or writes must be in
/// the hart's `x`.
pub(super) unsafe extern "sysv64" fn exec_helper(
    hart: *mut Hart,
    raw: u64,
    delta: u64,
    retired: u64,
) -> u64 {
    // SAFETY: the caller's contract: both pointers are live and unaliased for this call.
    let (hart, bus) = unsafe { (&mut *hart, &mut *(((*hart).env.bus) as *mut Bus)) };
    #[cfg(test)]
    {
        hart.jit.helper_execs += 1;
    }
    hart.exec_for_jit(bus, raw as u32, delta, retired)
}

/// Called by translated code chaining to `pc`, whose page the fetch TLB does not map, when
/// the interpreter's next step would be to fetch from it: [`Hart::fill_fetch_for_jit`].
/// Returns 1 if the fetch TLB now maps it to RAM, else 0 (the block leaves).
///
/// # Safety
///
/// As for [`load_helper`].
pub(super) unsafe extern "sysv64" fn fetch_helper(hart: *mut Hart, pc: u64) -> u64 {
    // SAFETY: the caller's contract: both pointers are live and unaliased for this call.
    let (hart, bus) = unsafe { (&mut *hart, &mut *(((*hart).env.bus) as *mut Bus)) };
    super::count!(hart, helper_fetch);
    hart.fill_fetch_for_jit(bus, pc) as u64
}

/// Called by translated code for a load its inline path does not serve (TLB miss, device,
/// across a page boundary): [`Hart::load_for_jit`] with `retired` the
/// instructions the block retired before the load.
///
/// # Safety
///
/// `hart` must point to the running hart, whose `env.bus` points to its bus, with
/// no other reference to either in use: true while translated code entered by
/// `Hart::enter_block` runs.
pub(super) unsafe extern "sysv64" fn load_helper(
    hart: *mut Hart,
    va: u64,
    size: u64,
    retired: u64,
) -> Loaded {
    // SAFETY: the caller's contract: both pointers are live and unaliased for this call.
    let (hart, bus) = unsafe { (&mut *hart, &mut *(((*hart).env.bus) as *mut Bus)) };
    #[cfg(test)]
    {
        hart.jit.helper_loads += 1;
    }
    super::count!(hart, helper_load);
    match hart.load_for_jit(bus, va, size as u32, retired) {
        Some(value) => Loaded { value, ok: 1 },
        None => Loaded { value: 0, ok: 0 },
    }
}

/// The translator's state: the code region and what has been placed in it.
#[derive(Debug, Default)]
pub struct Jit {
    /// Whether [`Hart::run`] uses translated code.
    enabled: bool,
    /// The executable region, created on first use.
    mem: Option<ExecMem>,
    /// Times the region filled up and was emptied.
    pub resets: u64,
    /// Size of the region to create.
    code_bytes: usize,
    /// Whether `pc` is where a block could start (reached by a jump or a trap, or right
    /// after an instruction no block holds). Only such places count towards [`HOT`], so
    /// that cold code run by the interpreter does not grow a block at every instruction.
    pub(super) candidate: bool,
    /// Set when translated code returns: the instruction the interpreter runs next is one
    /// a block left to it (or a jump target), and a block may start right after it.
    pub(super) resume: bool,
    /// Where placed code is recorded for a profiler, when asked for
    /// ([`Hart::set_perf_map`]); the caller drains it ([`Hart::take_perf_map`]).
    perf_map: Option<Vec<CodeSymbol>>,
    /// Where the code blocks share is in the region (once it exists).
    thunks: compile::Thunks,
    /// A word translated code keeps between two of its own instructions (an inline
    /// AMO's old value); nothing else reads it.
    scratch: u64,
    /// The translator's vectors, kept from one block to the next.
    buffers: compile::Buffers,
    /// Times translated code was entered from Rust (for the tests).
    #[cfg(test)]
    entries: u64,
    /// Loads translated code handed to [`load_helper`] (for the tests).
    #[cfg(test)]
    helper_loads: u64,
    /// Instructions translated code handed to [`exec_helper`] (for the tests).
    #[cfg(test)]
    helper_execs: u64,
}

/// Code regions of harts dropped in this process, emptied, with their shared code, for the
/// harts made after them: a region's pages are new shared memory the host kernel zeroes on
/// first touch (and, on a virtual host that returns free memory, the hypervisor supplies
/// again), which the first profile of a run with sibling machines put at 3 % of its time.
/// An emptied region holds exactly what a new one of its size holds where code can reach
/// (the trampoline, the epilogue and the shared code, emitted for its own address); the
/// bytes of dropped blocks behind them are reached by nothing, since a new hart's block
/// tables are empty. At most [`SPARE_REGIONS`] of each size are kept.
static SPARE_CODE: Mutex<Vec<(ExecMem, compile::Thunks)>> = Mutex::new(Vec::new());

/// Most code regions of one size [`SPARE_CODE`] keeps (about as many as machines run at
/// once; the translator makes one size, tests make others).
const SPARE_REGIONS: usize = 4;

/// A code region of `size` bytes with the trampoline, the epilogue and the shared code in
/// place: a dropped hart's, or a new one (`None` if the host gives no executable memory).
fn code_region(size: usize) -> Option<(ExecMem, compile::Thunks)> {
    let mut spare = SPARE_CODE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(i) = spare.iter().position(|(m, _)| m.size() == size) {
        return Some(spare.swap_remove(i));
    }
    drop(spare);
    let mut m = ExecMem::new(size, compile::load_globals, compile::store_globals)?;
    let mut a = x86::Asm::new(m.next());
    let (thunks, symbols) = compile::Thunks::emit(&mut a, m.base_addr());
    m.place_shared(&a.buf, symbols)
        .expect("the shared code fits in an empty region");
    Some((m, thunks))
}

impl Drop for Jit {
    /// Leaves the code region, emptied, to the harts made after this one ([`SPARE_CODE`]).
    fn drop(&mut self) {
        if let Some(mut mem) = self.mem.take() {
            mem.reset();
            let mut spare = SPARE_CODE.lock().unwrap_or_else(PoisonError::into_inner);
            if spare.iter().filter(|(m, _)| m.size() == mem.size()).count() < SPARE_REGIONS {
                spare.push((mem, self.thunks));
            }
        }
    }
}

/// A piece of code the translator placed, for a profiler's symbol map (Linux `perf`
/// reads `START SIZE name` lines from `/tmp/perf-PID.map`; see [`CodeSymbol::perf_line`]).
/// Addresses are host addresses in the code region; after the region fills up and starts
/// over ([`Jit::resets`]), new symbols reuse the addresses of dropped ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeSymbol {
    /// Host address of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the code is.
    pub what: CodeKind,
}

/// What a [`CodeSymbol`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// The translation of the guest block at virtual address `pc`, `insns` instructions.
    Block {
        /// The guest virtual address of the block's first instruction.
        pc: u64,
        /// Guest instructions in the block.
        insns: u32,
    },
    /// The slow paths of the block at `pc` (helper calls, exits to the interpreter),
    /// placed apart from the code that runs ([`CodeKind::Block`]).
    Cold {
        /// The guest virtual address of the block's first instruction.
        pc: u64,
    },
    /// Code blocks share (named `rv:<name>`: `rv:chain`, `rv:load`, `rv:exec`).
    Shared(&'static str),
    /// The trampoline from Rust into translated code.
    Entry,
    /// The shared epilogue that returns from translated code to Rust.
    Exit,
}

impl CodeSymbol {
    /// The symbol as one perf-map line (with its newline): `START SIZE name` in hex,
    /// named `rv:<guest pc>:<instructions>` for a block, `rv:entry` / `rv:exit` for the
    /// trampoline and the epilogue.
    pub fn perf_line(&self) -> String {
        let name = match self.what {
            CodeKind::Block { pc, insns } => format!("rv:{pc:x}:{insns}"),
            CodeKind::Cold { pc } => format!("rv:{pc:x}:cold"),
            CodeKind::Shared(name) => name.into(),
            CodeKind::Entry => "rv:entry".into(),
            CodeKind::Exit => "rv:exit".into(),
        };
        format!("{:x} {:x} {name}\n", self.start, self.size)
    }
}

/// Times a block start is reached before it is translated: code that runs a few times
/// (most of a boot) is cheaper to interpret than to translate. 4 rather than 8 since
/// the eleventh session of 2026-12-07 (the rustc bench, 9 pairs: user 0.94 and 0.97; a
/// build of small jobs in sibling machines unchanged within noise), 3 since the twelfth,
/// once translating a block allocated nothing (6 pairs: user 0.95, build MIPS medians 468
/// against 431); 2 measured no better than 3 (docs/performance.md).
const HOT: u8 = 3;

pub(super) use compile::block_boundary;

impl Jit {
    /// A translator, on if this build has one for its host.
    pub fn new() -> Self {
        let mut jit = Self::default();
        jit.enabled = exec::AVAILABLE;
        jit.code_bytes = CODE_BYTES;
        jit.candidate = true;
        jit
    }

    /// Whether translated code is in use.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

impl Hart {
    /// Turns translation on or off (on only where the host has a translator). Results
    /// are the same either way; this is for comparisons and benchmarks.
    pub fn set_jit(&mut self, on: bool) {
        self.jit.enabled = on && exec::AVAILABLE;
    }

    /// Starts (or stops, dropping what is undrained) recording a [`CodeSymbol`] for every
    /// piece of code the translator places, for a profiler's symbol map. Results are the
    /// same either way.
    pub fn set_perf_map(&mut self, on: bool) {
        // Code placed before recording started is not listed, except the trampoline.
        let fixed = || {
            (self.jit.mem.as_ref())
                .map(|m| m.fixed_symbols(m.base_addr()))
                .unwrap_or_default()
        };
        self.jit.perf_map = on.then(fixed);
    }

    /// The symbols recorded since the last call (empty unless [`Hart::set_perf_map`] is
    /// on), in placement order.
    pub fn take_perf_map(&mut self) -> Vec<CodeSymbol> {
        self.jit
            .perf_map
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Runs translated code from `pc` if there is (or can be) a block there. Returns
    /// whether any instruction retired.
    #[inline(always)]
    pub(super) fn run_jit(&mut self, bus: &mut Bus) -> bool {
        let pc = self.pc;
        // Only from a page the fetch path has already translated and checked.
        if vpn(pc) | self.mmu.fetch_ctx != self.mmu.fetch_tag && !self.refill_fetch_page() {
            return false;
        }
        let page = self.mmu.fetch_page;
        let mut entry = self.dcache.block(page, pc);
        if entry == BLOCK_UNKNOWN {
            if !self.jit.candidate || !self.dcache.visit(page, pc, HOT) {
                return false;
            }
            entry = self.translate_block(bus, page);
        }
        if entry == BLOCK_NONE {
            return false;
        }
        // Wherever translated code stops is a jump target or an instruction it left to
        // the interpreter: either way a block may start there.
        self.jit.candidate = true;
        self.jit.resume = true;
        self.enter_block(bus, entry)
    }

    /// Makes every block a store dropped leave as soon as it is entered: blocks of its
    /// page that stay may jump to its code directly (in-page exits to a block translated
    /// before them), and must find the guest's new code through the interpreter instead.
    /// Runs before translated code does: a store that drops a block returns to Rust first.
    fn bury_dropped_blocks(&mut self) {
        let dropped = self.dcache.take_dropped();
        if let Some(mem) = self.jit.mem.as_mut() {
            let epilogue = mem.epilogue();
            for at in dropped {
                mem.patch_jump(at as usize, epilogue);
            }
        }
    }

    #[inline(never)]
    fn enter_block(&mut self, bus: &mut Bus, entry: u32) -> bool {
        self.bury_dropped_blocks();
        let Some(mem) = self.jit.mem.as_ref() else {
            return false;
        };
        self.env = Env {
            slot_of: self.dcache.slot_of_addr(),
            load_tlb: self.mmu.load.as_ptr() as u64,
            store_tlb: self.mmu.store.as_ptr() as u64,
            fetch_tlb: self.mmu.fetch.as_ptr() as u64,
            tables: self.dcache.table_addrs_addr(),
            bus: bus as *mut Bus as u64,
        };
        let before = self.mcycle;
        let run = mem.entry_fn();
        let code = mem.addr(entry as usize);
        // SAFETY: `code` is the start of a block that `compile` produced for this hart
        // (entries are only ever block starts in this region, and are dropped with the
        // region's contents). Translated code reads and writes only the `Hart` fields
        // whose offsets `compile` takes with `offset_of!` (`x`, `pc`, `mcycle`, `stop`,
        // the TLB contexts, `env`; through the pointer passed here), RAM bytes inside
        // the pages the TLBs map inline and reads flash-drive bytes inside the pages the
        // load TLB maps (at host addresses their deltas hold, made for this bus's layout,
        // checked where `Hart::run` took the bus, which is borrowed with its RAM and
        // drives for the whole call, so no other reference to those bytes is live), and
        // returns with callee-saved registers restored by the trampoline. The
        // one Rust function it calls, `load_helper`, gets the hart through the same
        // pointer and the bus through `env.bus`, neither of which is otherwise used until
        // `run` returns.
        unsafe { run(self as *mut Hart, code) };
        super::count!(self, jit_entries);
        #[cfg(feature = "counters")]
        {
            // Why it returned.
            let c = &mut self.counters.now;
            if self.mcycle >= self.stop {
                c.exit_stop += 1;
            } else if vpn(self.pc) | self.mmu.fetch_ctx != self.mmu.fetch_tag {
                c.exit_other_page += 1;
            } else {
                match self.dcache.block(self.mmu.fetch_page, self.pc) {
                    BLOCK_UNKNOWN => c.exit_cold += 1,
                    BLOCK_NONE => c.exit_untranslated += 1,
                    _ => c.exit_translated += 1,
                }
            }
        }
        #[cfg(test)]
        {
            self.jit.entries += 1;
        }
        self.mcycle != before
    }

    /// Translates the block at `pc` (in cache page `page`) and records it; returns its
    /// entry, or [`BLOCK_NONE`] if the first instruction is not translated.
    #[inline(never)]
    fn translate_block(&mut self, bus: &mut Bus, page: u32) -> u32 {
        let pc = self.pc;
        let start = (pc & 0xfff) as usize;
        let ram_off = (self.dcache.ram_page(page) << 12) as usize;
        let bytes = &bus.ram.bytes()[ram_off..ram_off + 4096];
        let bufs = &mut self.jit.buffers;
        compile::collect(bytes, start, &mut bufs.items);
        let insns = &bufs.items;
        if insns.is_empty() {
            let first = bytes[start];
            let halfwords = if first & 3 == 3 { 2 } else { 1 };
            self.dcache.set_block(page, pc, BLOCK_NONE, halfwords);
            return BLOCK_NONE;
        }
        if self.jit.mem.is_none() {
            match code_region(self.jit.code_bytes) {
                Some((m, thunks)) => {
                    self.jit.thunks = thunks;
                    if let Some(map) = &mut self.jit.perf_map {
                        map.extend(m.fixed_symbols(m.base_addr()));
                    }
                    self.jit.mem = Some(m);
                }
                None => {
                    // No executable memory on this host: interpret.
                    self.jit.enabled = false;
                    return BLOCK_NONE;
                }
            }
        }
        let mem = self.jit.mem.as_mut().expect("created above");
        let bufs = &mut self.jit.buffers;
        let (insns, emitted) = (&bufs.items, &mut bufs.emit);
        let entries = self.dcache.block_entries(page);
        compile::Block::new(insns, start, entries, mem, self.jit.thunks, emitted).emit();
        if !mem.fits(emitted.code.len(), emitted.cold.len()) {
            // Region full: start over. Every table entry pointing into it goes first.
            mem.reset();
            self.jit.resets += 1;
            self.dcache.flush_blocks();
            let entries = self.dcache.block_entries(page);
            compile::Block::new(insns, start, entries, mem, self.jit.thunks, emitted).emit();
        }
        let code = &emitted.code;
        let at = mem.place(code).expect("fits in an empty region");
        let cold_at = mem.place_cold(&emitted.cold).expect("fits (checked above)");
        // Exits of the page's blocks that wait for this one jump straight to it now.
        for site in self.dcache.links_to(page, pc) {
            mem.patch_jump(site as usize, at);
        }
        self.dcache.add_links(page, at as u32, &emitted.links);
        if let Some(map) = &mut self.jit.perf_map {
            map.push(CodeSymbol {
                start: mem.base_addr() + at as u64,
                size: code.len() as u64,
                what: CodeKind::Block {
                    pc,
                    insns: insns.len() as u32,
                },
            });
            if !emitted.cold.is_empty() {
                map.push(CodeSymbol {
                    start: mem.base_addr() + cold_at as u64,
                    size: emitted.cold.len() as u64,
                    what: CodeKind::Cold { pc },
                });
            }
        }
        #[cfg(feature = "counters")]
        {
            self.counters.now.blocks += 1;
            self.counters.now.block_insns += insns.len() as u64;
        }
        let span = compile::span(insns, start);
        self.dcache.set_block(page, pc, at as u32, span);
        at as u32
    }
}

#[cfg(test)]
mod tests {
    use crate::bench::{
        addi, assemble, b, halt, i, integer_loop, jal, li32, memory_loop, r, s, slli, Platform,
    };
    use crate::machine::{Machine, MachineConfig};

    /// Guest registers the hand-assembled programs below name.
    const RA: u32 = 1;
    const SP: u32 = 2;
    const T0: u32 = 5;
    const T1: u32 = 6;
    const T2: u32 = 7;
    const S0: u32 = 8;
    const S1: u32 = 9;
    const A0: u32 = 10;
    const A1: u32 = 11;
    const A2: u32 = 12;
    const A3: u32 = 13;
    const A4: u32 = 14;
    const A5: u32 = 15;
    const A6: u32 = 16;
    const A7: u32 = 17;
    const S2: u32 = 18;
    const S3: u32 = 19;
    const T3: u32 = 28;
    const T4: u32 = 29;
    const T5: u32 = 30;

    /// A load (`f3`: lb 0, lh 1, lw 2, ld 3, lbu 4, lhu 5, lwu 6) of rd from imm(rs1).
    fn load(f3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
        i(imm, rs1, f3, rd, 0x03)
    }

    /// `add rd, a, b`.
    fn add(rd: u32, a: u32, b: u32) -> u32 {
        r(0, b, a, 0, rd, 0x33)
    }

    /// A yield to the host with data 5 through HTIF (`Break::Yielded(5)`), using
    /// registers `at` and `value`.
    fn yield_5(w: &mut Vec<u32>, at: u32, value: u32) {
        w.extend(li32(at, crate::board::HTIF_BASE as i32));
        w.push(addi(value, 0, crate::devices::htif::YIELD_DEVICE as i32));
        w.push(slli(value, value, 56));
        w.push(addi(value, value, 5));
        w.push(s(0, value, at, 3)); // sd value, 0(at)
    }

    /// An A instruction (`f5` its operation, `f3` 2 for a word, 3 for a doubleword).
    fn amo(f5: u32, rd: u32, rs1: u32, rs2: u32, f3: u32) -> u32 {
        (f5 << 27) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x2f
    }

    /// A CSR instruction (`f3`: 1 csrrw, 2 csrrs).
    fn csr(f3: u32, rd: u32, csr: u32, rs1: u32) -> u32 {
        (csr << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x73
    }

    /// Points `mtvec` at the handler [`close_loop_and_handler`] places (using t0);
    /// returns where the handler's offset is patched in.
    fn set_trap_handler(w: &mut Vec<u32>) -> usize {
        let la_handler = w.len();
        w.push(0x0000_0297); // auipc t0, 0
        w.push(0); // addi t0, t0, handler - la_handler
        w.push(csr(1, 0, 0x305, T0)); // csrw mtvec, t0
        la_handler
    }

    /// Loops back to `top` while t1, counted down, is not zero, then halts; then the trap
    /// handler (see [`set_trap_handler`]), which skips the trapping (4-byte) instruction
    /// and counts it in s1.
    fn close_loop_and_handler(w: &mut Vec<u32>, top: usize, la_handler: usize) {
        w.push(addi(T1, T1, -1));
        w.push(b((top as i32 - w.len() as i32) * 4, 0, T1, 1)); // bne t1, zero, top
        w.extend(halt(Platform::Cmvm));
        let handler = w.len();
        w[la_handler + 1] = addi(T0, T0, ((handler - la_handler) * 4) as i32);
        w.push(csr(2, T5, 0x341, 0)); // csrr t5, mepc
        w.push(addi(T5, T5, 4));
        w.push(csr(1, 0, 0x341, T5)); // csrw mepc, t5
        w.push(addi(S1, S1, 1));
        w.push(0x3020_0073); // mret
    }

    fn machine(image: &[u8], jit: bool) -> Machine {
        let mut m = Machine::new(&MachineConfig {
            ram_length: 4 << 20,
            ram_image: Some(image.to_vec()),
            ..MachineConfig::default()
        })
        .unwrap();
        m.hart.set_jit(jit);
        m
    }

    /// Runs `image` to its halt interpreted and translated: both halt with code 0 at the
    /// same `mcycle` with the same registers, and some of it ran translated. Returns the
    /// interpreted machine.
    fn halt_both_ways(image: &[u8]) -> Machine {
        let mut interpreted = machine(image, false);
        let mut translated = machine(image, true);
        interpreted.run(1 << 20);
        translated.run(1 << 20);
        assert_eq!(interpreted.halted(), Some(0));
        assert_eq!(
            (interpreted.mcycle(), interpreted.hart.x),
            (translated.mcycle(), translated.hart.x)
        );
        assert!(translated.hart.jit.entries > 0, "nothing ran translated");
        interpreted
    }

    /// Runs `image` interpreted and translated in steps of `step` instructions until it
    /// halts: the registers, `pc` and `mcycle` agree after every step, both halt with code
    /// 0, and their state hashes (every byte of RAM) agree. Returns both machines.
    fn lockstep(image: &[u8], step: u64) -> (Machine, Machine) {
        let (mut a, mut b) = (machine(image, false), machine(image, true));
        let mut limit = 0;
        while a.halted().is_none() {
            limit += step;
            run_both(&mut a, &mut b, limit);
        }
        assert_eq!((a.halted(), b.halted()), (Some(0), Some(0)));
        assert_eq!(a.root_hash(), b.root_hash());
        (a, b)
    }

    /// Runs `image` to each of `points` with and without translation (the translating
    /// machine set up by `setup`); the registers, `pc` and `mcycle` must agree at every
    /// one. Returns both machines.
    fn agree_at(
        image: &[u8],
        points: impl IntoIterator<Item = u64>,
        setup: impl FnOnce(&mut Machine),
    ) -> (Machine, Machine) {
        let mut a = machine(image, false);
        let mut b = machine(image, true);
        setup(&mut b);
        for p in points {
            run_both(&mut a, &mut b, p);
        }
        (a, b)
    }

    /// Runs both machines to `limit`: the registers, `pc` and `mcycle` must agree.
    fn run_both(a: &mut Machine, b: &mut Machine, limit: u64) {
        a.run(limit);
        b.run(limit);
        assert_eq!(
            (a.hart.pc, a.mcycle(), a.hart.x),
            (b.hart.pc, b.mcycle(), b.hart.x),
            "at mcycle limit {limit}"
        );
    }

    /// Translated stores mark no page dirty (their store-TLB entries allow them only into
    /// pages already marked), so each hash, which clears the marks, must take that
    /// permission back: hashed between runs over a loop that stores across 256 pages,
    /// the incremental state hash equals one computed from scratch every time, and the
    /// stores did run translated.
    #[test]
    fn translated_stores_after_a_hash_still_reach_the_next_hash() {
        let p = memory_loop(200_000, Platform::Cmvm);
        let mut m = machine(&p.image, true);
        let mut limit = 0;
        while m.halted().is_none() {
            limit += 7_919;
            m.run(limit);
            assert_eq!(
                m.root_hash_bytes(),
                m.root_hash_from_scratch(),
                "at mcycle {}",
                m.mcycle()
            );
        }
        assert!(m.hart.jit.entries > 0, "nothing ran translated");
    }

    /// A block that jumps straight to the code of another block of its page (translated
    /// before it) must not run that code once a store has dropped it: B is called 20
    /// times (translated), then A, which jumps to B, is called 20 times (translated,
    /// with a direct jump to B's code); from the 11th call on, each call is followed by
    /// a store that rewrites B's `addi a0, a0, 1` as `addi a0, a0, 2` and drops B but
    /// not A. Translated and interpreted agree, at every instruction too.
    #[test]
    fn a_direct_jump_to_a_dropped_block_finds_the_new_code() {
        let (s4, s6, ra) = (20, 22, 1);
        let mut w = vec![addi(S2, 0, 20)];
        let p1 = w.len();
        w.push(0); // jal ra, B
        w.push(addi(S2, S2, -1));
        w.push(b((p1 as i32 - w.len() as i32) * 4, 0, S2, 1)); // bne s2, zero, p1
        w.push(addi(S2, 0, 20));
        w.push(addi(s6, 0, 10));
        w.extend(li32(s4, addi(A0, A0, 2) as i32));
        let la = w.len();
        w.push((S3 << 7) | 0x17); // auipc s3, 0
        w.push(0); // addi s3, s3, B - la
        let p2 = w.len();
        w.push(0); // jal ra, A
        w.push(addi(S2, S2, -1));
        w.push(b((p2 as i32 - w.len() as i32) * 4, s6, S2, 5)); // bge s2, s6, p2
        w.push(s(0, s4, S3, 2)); // sw s4, 0(s3): rewrites B
        w.push(b((p2 as i32 - w.len() as i32) * 4, 0, S2, 1)); // bne s2, zero, p2
        w.extend(halt(Platform::Cmvm));
        let a = w.len();
        w.push(jal(4, 0)); // A: jal zero, B
        let b_at = w.len();
        w.push(addi(A0, A0, 1)); // B
        w.push(0x0000_8067); // ret
        w[p1] = jal((b_at as i32 - p1 as i32) * 4, ra);
        w[la + 1] = addi(S3, S3, (b_at as i32 - la as i32) * 4);
        w[p2] = jal((a as i32 - p2 as i32) * 4, ra);
        let image = assemble(&w);
        let interpreted = halt_both_ways(&image);
        assert_eq!(interpreted.hart.x[A0 as usize], 20 + 11 + 9 * 2);
        agree_at(&image, 1..2000, |_| {});
    }

    /// An exit to a block of its page that is translated after it starts as a jump back
    /// to Rust and is patched to jump straight there when that block is translated: a
    /// loop of two blocks, the first translated before the second (it is reached first),
    /// then runs without leaving translated code, and agrees with the interpreter.
    #[test]
    fn an_exit_to_a_block_translated_later_is_patched_to_jump_there() {
        let mut w = vec![addi(S2, 0, 1000)];
        let top = w.len();
        w.push(addi(A0, A0, 1)); // A
        w.push(0); // jal zero, B
        w.push(addi(S3, S3, 5)); // skipped
        let b_at = w.len();
        w.push(addi(A0, A0, 2)); // B
        w.push(addi(S2, S2, -1));
        w.push(b((top as i32 - w.len() as i32) * 4, 0, S2, 1)); // bne s2, zero, A
        w.extend(halt(Platform::Cmvm));
        w[top + 1] = jal((b_at as i32 - top as i32 - 1) * 4, 0);
        let image = assemble(&w);
        assert_eq!(halt_both_ways(&image).hart.x[A0 as usize], 3000);
        let mut translated = machine(&image, true);
        translated.run(1 << 20);
        assert_eq!(translated.hart.x[A0 as usize], 3000);
        // Each of the 1000 rounds would return to Rust once if A's exit stayed unpatched.
        assert!(
            translated.hart.jit.entries < 50,
            "{} entries into translated code",
            translated.hart.jit.entries
        );
    }

    /// A page first written as data and then run as code: from then on translated stores
    /// into it must go through the interpreter, which drops the decoded instructions they
    /// overwrite. A hot loop writes "addi a0, a0, 1; ret" into a fresh page, calls it,
    /// rewrites the first instruction as "addi a0, a0, 2", calls it again: every call
    /// runs what was last written, translated as interpreted.
    #[test]
    fn a_data_page_that_becomes_code_takes_translated_stores_through_the_interpreter() {
        let (s4, s5, s6) = (20, 21, 22);
        let jalr_ra = |rs1: u32| (rs1 << 15) | (1 << 7) | 0x67;
        let mut w = Vec::new();
        w.extend(li32(s4, addi(A0, A0, 1) as i32));
        w.extend(li32(s5, addi(A0, A0, 2) as i32));
        w.extend(li32(s6, 0x0000_8067)); // ret
        w.push((0x40 << 12) | (S3 << 7) | 0x17); // auipc s3, 0x40: 256 KiB on
        w.push(addi(S2, 0, 50));
        let top = w.len();
        w.push(s(0, s4, S3, 2)); // sw s4, 0(s3)
        w.push(s(4, s6, S3, 2)); // sw s6, 4(s3)
        w.push(jalr_ra(S3));
        w.push(s(0, s5, S3, 2)); // sw s5, 0(s3)
        w.push(jalr_ra(S3));
        w.push(addi(S2, S2, -1));
        w.push(b((top as i32 - w.len() as i32) * 4, 0, S2, 1)); // bne s2, zero, top
        w.extend(halt(Platform::Cmvm));
        let image = assemble(&w);
        assert_eq!(halt_both_ways(&image).hart.x[A0 as usize], 150);
    }

    /// A hart made after another was dropped takes that hart's code region, emptied,
    /// instead of new memory: there it runs other code from the addresses the first ran
    /// its own at, and agrees with the interpreter all the way.
    #[test]
    fn a_new_hart_runs_in_a_dropped_hart_s_region_as_in_a_new_one() {
        // A size no other test asks for, so that no other test takes the region between.
        const SIZE: usize = 72 << 10;
        let mut first = machine(&integer_loop(50_000, Platform::Cmvm).image, true);
        first.hart.jit.code_bytes = SIZE;
        first.run(1 << 20);
        assert_eq!(first.halted(), Some(0));
        let region = first.hart.jit.mem.as_ref().map(|m| m.base_addr());
        assert!(region.is_some(), "the first machine translated");
        drop(first);
        // A loop that calls a function 2000 times: its returns chain through the shared
        // code the region holds.
        let mut w = vec![addi(S2, 0, 2000)];
        let top = w.len();
        w.push(0); // jal ra, f
        w.push(addi(S2, S2, -1));
        w.push(b((top as i32 - w.len() as i32) * 4, 0, S2, 1)); // bne s2, zero, top
        w.extend(halt(Platform::Cmvm));
        let f = w.len();
        w.push(addi(A0, A0, 3));
        w.push(0x0000_8067); // ret
        w[top] = jal((f as i32 - top as i32) * 4, RA);
        let points = (1..100).map(|k| k * 97).chain([1 << 20]);
        let (mut a, mut b) = agree_at(&assemble(&w), points, |b| b.hart.jit.code_bytes = SIZE);
        assert_eq!(b.halted(), Some(0));
        assert_eq!(b.hart.x[A0 as usize], 6000);
        assert_eq!(b.hart.jit.mem.as_ref().map(|m| m.base_addr()), region);
        assert!(b.hart.jit.entries > 0, "nothing ran translated");
        assert_eq!(a.root_hash(), b.root_hash());
    }

    #[test]
    fn a_full_code_region_starts_over_without_changing_results() {
        // 400 blocks of "addi a0, a0, 1; jal zero, next", run 40 times: several times
        // the code an 8 KiB region holds.
        let mut w = Vec::new();
        w.extend(li32(T0, 40));
        let top = w.len();
        for _ in 0..400 {
            w.push(addi(A0, A0, 1));
            w.push(0x0040_006f); // jal zero, +4
        }
        w.push(addi(T0, T0, -1));
        w.push(b((top as i32 - w.len() as i32) * 4, 0, T0, 1)); // bne t0, zero, top
        w.extend(halt(crate::bench::Platform::Cmvm));
        let points = (5_000..80_000).step_by(5_000).chain([1 << 20]);
        let (mut a, mut b) = agree_at(&assemble(&w), points, |b| {
            b.hart.jit.code_bytes = 8 << 10;
        });
        assert_eq!(b.halted(), Some(0));
        assert_eq!(b.hart.x[A0 as usize], 40 * 400);
        assert!(b.hart.jit.resets >= 5, "{} resets", b.hart.jit.resets);
        assert_eq!(a.root_hash(), b.root_hash());
    }

    /// Checks a perf map: every symbol inside the region, blocks named by real guest
    /// addresses, and no overlaps except that a region reset starts over at its bottom.
    /// Returns the number of blocks.
    fn check_perf_map(m: &Machine, map: &[super::CodeSymbol], region: u64) -> usize {
        use super::CodeKind;
        assert!(matches!(map[0].what, CodeKind::Entry), "{:?}", map[0]);
        assert!(matches!(map[1].what, CodeKind::Exit), "{:?}", map[1]);
        let base = map[0].start;
        assert_eq!(map[0].start + map[0].size, map[1].start);
        // The shared code follows the epilogue (placements are 16-byte aligned), one
        // piece after another.
        let mut fixed_end = (map[1].start + map[1].size).next_multiple_of(16);
        let shared = map[2..]
            .iter()
            .take_while(|s| matches!(s.what, CodeKind::Shared(_)))
            .count();
        assert!(shared > 0, "no shared code in {:?}", &map[..3]);
        for s in &map[2..2 + shared] {
            assert_eq!(s.start, fixed_end, "{s:?}");
            assert!(s.size > 0 && s.perf_line().contains(" rv:"), "{s:?}");
            fixed_end += s.size;
        }
        let cold_start = base + (region / 2).next_multiple_of(16);
        let (mut end, mut cold_end) = (fixed_end, cold_start);
        let mut generations = 1;
        let mut blocks = 0;
        let mut last_pc = None;
        for s in &map[2 + shared..] {
            assert!(s.size > 0, "{s:?}");
            assert!(
                s.start + s.size <= base + region,
                "{s:?} outside the region"
            );
            match s.what {
                CodeKind::Block { pc, insns } => {
                    assert!(
                        (1..=64).contains(&insns) && pc >= crate::board::RAM_BASE,
                        "{s:?}"
                    );
                    assert!(
                        s.start >= fixed_end && s.start + s.size <= cold_start,
                        "{s:?}"
                    );
                    if s.start < end {
                        // Only a reset may go back, and then to the bottom.
                        assert_eq!(s.start, fixed_end.next_multiple_of(16), "{s:?} overlaps");
                        generations += 1;
                        cold_end = cold_start;
                    }
                    end = s.start + s.size;
                    assert_eq!(
                        s.perf_line(),
                        format!("{:x} {:x} rv:{pc:x}:{insns}\n", s.start, s.size)
                    );
                    blocks += 1;
                    last_pc = Some(pc);
                }
                CodeKind::Cold { pc } => {
                    // Right after its block's symbol, in the cold half, after the last.
                    assert_eq!(Some(pc), last_pc.take(), "{s:?}");
                    assert_eq!(s.start, cold_end, "{s:?}");
                    cold_end = s.start + s.size;
                    assert_eq!(
                        s.perf_line(),
                        format!("{:x} {:x} rv:{pc:x}:cold\n", s.start, s.size)
                    );
                }
                _ => panic!("{s:?} among the blocks"),
            }
        }
        assert_eq!(generations - 1, m.hart.jit.resets);
        blocks
    }

    #[test]
    fn the_perf_map_lists_every_block_without_changing_results() {
        let p = integer_loop(100_000, Platform::Cmvm);
        let (_, mut b) = agree_at(&p.image, [1_000, 50_000, 200_000], |b| {
            b.hart.set_perf_map(true)
        });
        let map = b.hart.take_perf_map();
        assert!(check_perf_map(&b, &map, super::CODE_BYTES as u64) > 0);
        assert!(b.hart.take_perf_map().is_empty(), "drained");
        // A small region that fills up many times: symbols start over at its bottom.
        use crate::bench::b as br;
        let mut w = Vec::new();
        w.extend(li32(5, 40));
        let top = w.len();
        for _ in 0..400 {
            w.push(addi(10, 10, 1));
            w.push(0x0040_006f); // jal zero, +4
        }
        w.push(addi(5, 5, -1));
        w.push(br((top as i32 - w.len() as i32) * 4, 0, 5, 1));
        w.extend(halt(Platform::Cmvm));
        let (mut a, mut b) = agree_at(&assemble(&w), [30_000, 1 << 20], |b| {
            b.hart.jit.code_bytes = 8 << 10;
            b.hart.set_perf_map(true);
        });
        assert_eq!(b.halted(), Some(0));
        assert!(b.hart.jit.resets >= 5);
        let map = b.hart.take_perf_map();
        let blocks = check_perf_map(&b, &map, 8 << 10);
        assert!(blocks > 100, "{blocks} blocks");
        let mut off = machine(&assemble(&w), true);
        off.hart.jit.code_bytes = 8 << 10;
        off.run(1 << 20);
        assert_eq!(off.root_hash(), b.root_hash());
        assert_eq!(a.root_hash(), b.root_hash());
    }

    /// Division and remainder, all eight of them, on the operands where RISC-V and x86
    /// part ways (a zero divisor, the most negative value by -1, in 64 and 32 bits) and
    /// ordinary ones, with rd aliasing a source: translated (inside a hot loop, so the
    /// whole body is one block) and interpreted to the same registers.
    #[test]
    fn division_agrees_with_the_interpreter_on_every_edge() {
        let values: [u64; 14] = [
            0,
            1,
            u64::MAX,
            2,
            -7i64 as u64,
            7,
            i64::MIN as u64,
            i64::MAX as u64,
            0x8000_0000,
            0xffff_ffff,
            0x7fff_ffff,
            0x1_0000_0000,
            0xffff_ffff_8000_0000,
            0x1234_5678_9abc_def1,
        ];
        // div, divu, rem, remu (OP) and divw, divuw, remw, remuw (OP-32): funct3 4..=7.
        let mut body = Vec::new();
        let mut rd = 12;
        for op in [0x33, 0x3b] {
            for f3 in 4..8 {
                body.push(r(1, A1, A0, f3, rd, op)); // rd = a0 op a1
                body.push(r(1, 0, A0, f3, rd + 8, op)); // by x0
                rd += 1;
            }
        }
        // rd the same as rs2, and both sources the same register.
        body.push(addi(28, A1, 0));
        body.push(r(1, 28, A0, 6, 28, 0x33)); // rem t3, a0, t3
        body.push(addi(29, A0, 0));
        body.push(r(1, 29, 29, 4, 29, 0x3b)); // divw t4, t4, t4
        body.push(r(1, A0, A1, 5, 30, 0x33)); // divu t5, a1, a0
        let mut w = vec![addi(T0, 0, 20)];
        let top = w.len();
        w.extend(&body);
        w.push(addi(T0, T0, -1));
        w.push(b((top as i32 - w.len() as i32) * 4, 0, T0, 1)); // bne t0, zero, top
        w.extend(halt(Platform::Cmvm));
        let image = assemble(&w);
        for &x in &values {
            for &y in &values {
                let set = |m: &mut Machine| {
                    m.hart.x[A0 as usize] = x;
                    m.hart.x[A1 as usize] = y;
                };
                let mut a = machine(&image, false);
                set(&mut a);
                let (_, mut b) = agree_at(&image, [], |b| {
                    set(b);
                    b.hart.set_perf_map(true);
                });
                a.run(1 << 20);
                b.run(1 << 20);
                assert_eq!(b.halted(), Some(0));
                assert_eq!(
                    (a.mcycle(), a.hart.x),
                    (b.mcycle(), b.hart.x),
                    "{x:#x} by {y:#x}"
                );
                // The loop body ran as one translated block.
                let body_insns = body.len() as u32 + 2;
                assert!(
                    b.hart.take_perf_map().iter().any(|s| matches!(
                        s.what,
                        super::CodeKind::Block { insns, .. } if insns == body_insns
                    )),
                    "the loop was not translated whole"
                );
            }
        }
        // Spot checks against the manual's table.
        let mut m = machine(&image, true);
        m.hart.x[A0 as usize] = i64::MIN as u64;
        m.hart.x[A1 as usize] = u64::MAX;
        m.run(1 << 20);
        assert_eq!(m.hart.x[12], i64::MIN as u64); // div: overflow gives the dividend
        assert_eq!(m.hart.x[14], 0); // rem: overflow gives 0
        assert_eq!(m.hart.x[20], u64::MAX); // div by zero: all ones
        assert_eq!(m.hart.x[22], i64::MIN as u64); // rem by zero: the dividend
        assert_eq!(m.hart.x[16], 0); // divw: 0 / -1 (low words)
        assert_eq!(m.hart.x[24], u64::MAX); // divw by zero: all ones
    }

    /// Loads the inline path does not serve — a device whose value is the instruction
    /// count (CLINT `mtime`), RAM across a page boundary — and flash-drive loads, sign- and
    /// zero-extended, inside a hot loop: the helper serves them without leaving the
    /// block, and the results and `mcycle` agree with the interpreter's at every step.
    /// The loop starts at many offsets so that `mtime` ticks at every position in the
    /// block.
    #[test]
    fn loads_off_the_inline_path_agree_with_the_interpreter() {
        use crate::machine::FlashConfig;
        let flash: Vec<u8> = (0..4096u32).map(|i| (i * 37 + 0x85) as u8).collect();
        for pad in 0..24 {
            let mut w = Vec::new();
            w.extend(li32(T0, 0x4020_0000));
            w.push(slli(T0, T0, 1)); // t0 = the flash drive, above 4 MiB of RAM
            w.extend(li32(A2, 0x4000_8000));
            w.push(slli(A2, A2, 1)); // a2 = RAM_BASE + 64 KiB
            w.extend(li32(
                A3,
                (crate::board::CLINT_BASE + crate::board::CLINT_MTIME) as i32,
            ));
            w.extend(std::iter::repeat_n(addi(0, 0, 0), pad));
            w.push(addi(T1, 0, 700));
            let top = w.len();
            for (f3, base, imm) in [
                (3, A3, 0),  // ld mtime
                (3, A2, -3), // ld across a page boundary
                (1, A2, -1), // lh across it
                (3, A3, 0),
                (2, T0, 4),  // flash lw
                (4, T0, 5),  // flash lbu
                (0, T0, 6),  // flash lb
                (6, A2, -2), // lwu across it
                (3, A3, 0),
            ] {
                w.push(load(f3, A4, base, imm));
                w.push(add(A5, A5, A4));
            }
            w.push(load(3, 0, A3, 0)); // into x0
            w.push(addi(T1, T1, -1));
            w.push(b((top as i32 - w.len() as i32) * 4, 0, T1, 1)); // bne t1, zero, top
            w.extend(halt(Platform::Cmvm));
            let mut image = assemble(&w);
            image.resize(0x1_0000, 0);
            image.extend((0..64u8).map(|i| i.wrapping_mul(151) ^ 0x9c));
            let build = |jit: bool| {
                let mut m = Machine::new(&MachineConfig {
                    ram_length: 4 << 20,
                    ram_image: Some(image.clone()),
                    flash_drives: vec![FlashConfig {
                        label: "input".into(),
                        image: flash.clone(),
                        shared: false,
                    }],
                    ..MachineConfig::default()
                })
                .unwrap();
                m.hart.set_jit(jit);
                m
            };
            let (mut a, mut b) = (build(false), build(true));
            let mut limit = 0;
            while a.halted().is_none() {
                limit += 997;
                run_both(&mut a, &mut b, limit);
            }
            assert_eq!(b.halted(), Some(0));
            assert_eq!(a.root_hash(), b.root_hash());
            // The loop ran translated, its loads served inside the block: far fewer
            // entries into translated code than iterations.
            assert!(b.hart.jit.entries < 100, "{} entries", b.hart.jit.entries);
        }
    }

    /// Misaligned loads and stores inside one page (served inline, in one host access)
    /// and across a page boundary (served by the helpers, byte by byte), in a hot loop
    /// that stores a different value every time: registers, `mcycle` and the final state
    /// hash (so every byte in RAM) agree with the interpreter's at every step, and the
    /// loop stays in translated code.
    #[test]
    fn misaligned_accesses_inside_and_across_pages_agree_with_the_interpreter() {
        let mut w = Vec::new();
        w.extend(li32(A2, 0x4000_8000));
        w.push(slli(A2, A2, 1)); // a2 = RAM_BASE + 64 KiB, a page boundary
        w.extend(li32(A6, 0x1234_5678));
        w.push(slli(A6, A6, 20)); // a6 = a value with bytes all over
        w.push(addi(T1, 0, 500));
        let top = w.len();
        w.push(add(A6, A6, T1)); // a new value every time round
                                 // (f3 of the store, of the load back, offset from a2)
        for (sf3, lf3, imm) in [
            (3, 3, 3),     // sd / ld inside the page
            (2, 2, 0x7d),  // sw / lw inside
            (1, 5, 0x41),  // sh / lhu inside
            (3, 3, -3),    // sd / ld across the boundary
            (2, 6, -2),    // sw / lwu across
            (1, 1, -1),    // sh / lh across
            (3, 3, 0x7f9), // sd / ld inside, mid-page
        ] {
            w.push(s(imm, A6, A2, sf3));
            w.push(load(lf3, A4, A2, imm));
            w.push(add(A5, A5, A4));
            w.push(load(3, A4, A2, imm - 5)); // the bytes around it, aligned or not
            w.push(add(A5, A5, A4));
        }
        w.push(addi(T1, T1, -1));
        w.push(b((top as i32 - w.len() as i32) * 4, 0, T1, 1)); // bne t1, zero, top
        w.extend(halt(Platform::Cmvm));
        let (a, b) = lockstep(&assemble(&w), 1009);
        assert_ne!(a.hart.x[A5 as usize], 0);
        assert!(b.hart.jit.entries < 100, "{} entries", b.hart.jit.entries);
    }

    /// Guest calls and returns chained through translated code: recursion 70 calls
    /// deep, a call into another page, an indirect call, and a function that returns
    /// somewhere else than it was called from (it moves ra past the next instruction) —
    /// registers, `mcycle` and the final state agree with the interpreter's at every
    /// step, and the loop stays in translated code. (Any scheme that predicts returns,
    /// such as the host return stack tried in docs/performance.md, must pass it.)
    #[test]
    fn guest_calls_and_returns_agree_with_the_interpreter() {
        let jalr = |rd: u32, rs1: u32, imm: i32| {
            (((imm as u32) & 0xfff) << 20) | (rs1 << 15) | (rd << 7) | 0x67
        };
        let ret = jalr(0, RA, 0);
        let auipc = |rd: u32| (rd << 7) | 0x17;
        // Word indices of the functions (the far one two pages up).
        const REC: usize = 64;
        const LEAF: usize = 100;
        const LIAR: usize = 110;
        const FAR: usize = 2048;
        let mut w = Vec::new();
        w.extend(li32(SP, 0x4010_0000));
        w.push(slli(SP, SP, 1)); // sp = RAM_BASE + 2 MiB
        w.push(addi(S0, 0, 150));
        let top = w.len();
        w.push(addi(A0, 0, 70)); // 70 calls deep
        w.push(jal(((REC - w.len()) * 4) as i32, RA));
        w.push(add(S1, S1, A0));
        w.push(jal(((FAR - w.len()) * 4) as i32, RA));
        w.push(add(S1, S1, A0));
        w.push(auipc(T0));
        w.push(addi(T0, T0, ((LEAF - w.len() + 1) * 4) as i32));
        w.push(jalr(RA, T0, 0)); // an indirect call
        w.push(add(S1, S1, A0));
        w.push(jal(((LIAR - w.len()) * 4) as i32, RA));
        w.push(addi(S1, S1, 1000)); // skipped: the liar returns past it
        w.push(addi(S1, S1, 1));
        w.push(addi(S0, S0, -1));
        w.push(b((top as i32 - w.len() as i32) * 4, 0, S0, 1)); // bnez s0, top
        w.extend(halt(Platform::Cmvm));
        assert!(w.len() <= REC);
        w.resize(REC, addi(0, 0, 0));
        // rec(a0): 1 + 2 + ... + a0, recursively.
        w.push(addi(SP, SP, -16));
        w.push(s(8, RA, SP, 3));
        w.push(s(0, A0, SP, 3));
        w.push(addi(A0, A0, -1));
        let base = w.len();
        w.push(0); // beqz a0, bottom (patched below)
        w.push(jal(((REC - w.len()) * 4) as i32, RA));
        w.push(load(3, T1, SP, 0));
        w.push(add(A0, A0, T1));
        w.push(load(3, RA, SP, 8));
        w.push(addi(SP, SP, 16));
        w.push(ret);
        w[base] = b(((w.len() - base) * 4) as i32, 0, A0, 0);
        w.push(addi(A0, 0, 1));
        w.push(load(3, RA, SP, 8));
        w.push(addi(SP, SP, 16));
        w.push(ret);
        assert!(w.len() <= LEAF);
        w.resize(LEAF, addi(0, 0, 0));
        w.push(addi(A0, A0, 5));
        w.push(ret);
        w.resize(LIAR, addi(0, 0, 0));
        w.push(addi(RA, RA, 4));
        w.push(ret);
        w.resize(FAR, addi(0, 0, 0));
        w.push(addi(A0, A0, 3));
        w.push(ret);
        let (a, b) = lockstep(&assemble(&w), 1013);
        // Each round adds rec's 2485 (1 + ... + 70), then 3 more (far), 5 more (leaf),
        // and 1 (the liar skips the 1000).
        let round = 2485 + 2488 + 2493 + 1;
        assert_eq!(a.hart.x[S1 as usize], 150 * round);
        assert!(b.hart.jit.entries < 3000, "{} entries", b.hart.jit.entries);
    }

    /// What the helper runs inside a block — atomics (LR/SC that succeed and fail), CSR
    /// reads of the counters (exact counts at every position: the loop starts at many
    /// offsets), a CSR write, double-precision arithmetic, a misaligned AMO that traps
    /// into a handler, stores to a device and into the page of the running code (both
    /// make the block leave) — agrees with the interpreter at every step.
    #[test]
    fn instructions_run_by_the_helper_agree_with_the_interpreter() {
        // The helpers' results go to a4 (kept per block) and add up in a5, then to a0 and
        // a1, which are global (`compile::GLOBALS`): stored before each call, reloaded
        // after, and handed on between blocks in their host registers.
        for (pad, (a4, a5)) in (0..12).flat_map(|pad| [(pad, (14, 15)), (pad, (10, 11))]) {
            let mut w = Vec::new();
            // mtvec = handler (patched below), mstatus.FS on.
            let la_handler = set_trap_handler(&mut w);
            w.extend(li32(T0, 0x2000));
            w.push(csr(2, 0, 0x300, T0)); // csrs mstatus, t0
            w.extend(li32(A2, 0x4000_8000));
            w.push(slli(A2, A2, 1)); // a2 = RAM_BASE + 64 KiB
            w.push(addi(A3, A2, 8));
            w.push(addi(A7, A2, 3)); // misaligned
            w.extend(li32(T3, crate::board::UART_BASE as i32));
            w.push(0x0000_0e97); // auipc t4, 0: the code page
            w.push(addi(7, 0, 3)); // t2 = 3
            w.extend(std::iter::repeat_n(addi(0, 0, 0), pad));
            w.push(addi(T1, 0, 300));
            let top = w.len();
            let body = [
                amo(0x00, a4, A2, 7, 3), // amoadd.d a4, t2, (a2)
                add(a5, a5, a4),
                amo(0x01, a4, A3, a5, 2), // amoswap.w a4, a5, (a3)
                add(a5, a5, a4),
                amo(0x1c, a4, A2, a5, 3), // amomaxu.d
                add(a5, a5, a4),
                amo(0x10, a4, A3, a5, 2), // amomin.w
                add(a5, a5, a4),
                amo(0x02, a4, A2, 0, 3),  // lr.d a4, (a2)
                amo(0x03, A6, A2, a5, 3), // sc.d a6, a5, (a2): succeeds
                add(a5, a5, A6),
                amo(0x03, A6, A2, a5, 3), // sc.d again: fails
                add(a5, a5, A6),
                csr(2, a4, 0xb00, 0), // csrr a4, mcycle
                add(a5, a5, a4),
                csr(2, a4, 0xb02, 0), // csrr a4, minstret
                add(a5, a5, a4),
                csr(1, a4, 0x340, a5), // csrrw a4, mscratch, a5
                add(a5, a5, a4),
                0xf200_0053 | (a5 << 15) | (1 << 7), // fmv.d.x f1, a5
                (1 << 25) | (1 << 20) | (1 << 15) | (7 << 12) | (2 << 7) | 0x53, // fadd.d f2, f1, f1
                0xe200_0053 | (2 << 15) | (a4 << 7),                             // fmv.x.d a4, f2
                add(a5, a5, a4),
                amo(0x00, a4, A7, a5, 2), // amoadd.w a4, a5, (a7): misaligned, traps
                add(a5, a5, a4),
                s(7, a5, T3, 0),  // sb a5, 7(t3): the UART's scratch register
                s(16, a5, A2, 3), // sd a5, 16(a2)
                s(-8, a5, T4, 3), // sd a5, -8(t4): into the page of this code
                add(a5, a5, S1),
            ];
            w.extend(body);
            close_loop_and_handler(&mut w, top, la_handler);
            let image = assemble(&w);
            let mut a = machine(&image, false);
            let mut b = machine(&image, true);
            b.hart.set_perf_map(true);
            let mut limit = 0;
            while a.halted().is_none() {
                limit += 1009;
                a.run(limit);
                b.run(limit);
                assert_eq!(
                    (a.hart.pc, a.mcycle(), a.hart.x, a.hart.f),
                    (b.hart.pc, b.mcycle(), b.hart.x, b.hart.f),
                    "pad {pad}, a4 x{a4}, a5 x{a5}, limit {limit}"
                );
            }
            assert_eq!(b.halted(), Some(0));
            assert_eq!(b.hart.x[S1 as usize], 300);
            assert_eq!(a.root_hash(), b.root_hash());
            let body = body.len() as u32 + 2;
            assert!(
                b.hart.take_perf_map().iter().any(|s| matches!(
                    s.what,
                    super::CodeKind::Block { insns, .. } if insns == body
                )),
                "the loop was not translated whole"
            );
        }
    }

    /// TLB entries hold host addresses of RAM (and of the drives), good only on the bus
    /// they were filled from: a hart that goes on with another bus (its RAM elsewhere on
    /// the host, holding another value where the loop loads from) reads that bus's RAM,
    /// translated as interpreted. Fails if `Hart::run` keeps entries of the other layout.
    #[test]
    fn a_hart_handed_another_bus_reads_that_bus_s_ram() {
        let image = |value: u8| {
            let mut w = Vec::new();
            w.extend(li32(A2, 0x4000_8000));
            w.push(slli(A2, A2, 1)); // a2 = RAM_BASE + 64 KiB
            w.push(addi(T1, 0, 1000));
            let top = w.len();
            w.push(load(3, A4, A2, 0)); // ld a4, 0(a2)
            w.push(add(A5, A5, A4));
            w.push(addi(T1, T1, -1));
            w.push(b((top as i32 - w.len() as i32) * 4, 0, T1, 1)); // bne t1, zero, top
            w.extend(halt(Platform::Cmvm));
            let mut bytes = assemble(&w);
            bytes.resize(64 << 10, 0);
            bytes.push(value);
            bytes
        };
        let mut sums = Vec::new();
        for jit in [false, true] {
            let mut a = machine(&image(1), jit);
            let mut b = machine(&image(100), jit);
            a.run(2_000);
            std::mem::swap(&mut a.bus, &mut b.bus);
            a.run(1 << 20);
            assert_eq!(a.halted(), Some(0));
            sums.push(a.hart.x[A5 as usize]);
        }
        assert_eq!(sums[0], sums[1]);
        assert!(sums[0] > 1000, "the loop read the second bus: {sums:?}");
    }

    /// Writes to `mstatus` that make no interrupt takeable (clearing MIE, setting and
    /// clearing SUM, as Linux does around every stretch without interrupts and every
    /// access to user memory, and setting MIE with nothing pending) let translated code go
    /// on, while one that sets MIE with an interrupt pending takes it right after, as the
    /// interpreter does: a loop that raises the software interrupt every 16th round while
    /// MIE is clear agrees with the interpreter at every step, takes each interrupt, and
    /// enters translated code fewer than twice per three rounds (150 times, most of them
    /// around the interrupts and the lockstep's steps; 421 when every write that sets MIE
    /// stops translated code, 1,286 when every status write does, as all did before).
    #[test]
    fn status_writes_that_enable_nothing_stay_in_translated_code() {
        const ROUNDS: usize = 300;
        const MSTATUS: u32 = 0x300;
        let mut w = Vec::new();
        let la_handler = set_trap_handler(&mut w);
        w.extend(li32(T3, crate::board::CLINT_BASE as i32)); // msip at offset 0
        w.push(addi(T4, 0, 8)); // MIE (mstatus) and MSIE (mie): bit 3
        w.push(csr(2, 0, 0x304, T4)); // csrs mie, t4
        w.extend(li32(A6, 1 << 18)); // SUM
        w.push(addi(T2, 0, 1));
        w.push(addi(T1, 0, ROUNDS as i32));
        let top = w.len();
        w.push(csr(3, 0, MSTATUS, T4)); // csrc mstatus, t4: interrupts off
        w.push(csr(2, 0, MSTATUS, A6)); // csrs mstatus, a6
        w.push(add(A5, A5, T1));
        w.push(csr(3, 0, MSTATUS, A6)); // csrc mstatus, a6
        w.push(i(15, T1, 7, A4, 0x13)); // andi a4, t1, 15
        w.push(b(8, 0, A4, 1)); // bne a4, zero, +8
        w.push(s(0, T2, T3, 2)); // sw t2, 0(t3): msip = 1, pending while MIE is clear
        w.push(csr(2, 0, MSTATUS, T4)); // csrs mstatus, t4: taken here if pending
        w.push(addi(0, 0, 0)); // (the handler returns past this)
        w.push(addi(T1, T1, -1));
        w.push(b((top as i32 - w.len() as i32) * 4, 0, T1, 1)); // bne t1, zero, top
        w.extend(halt(Platform::Cmvm));
        let handler = w.len();
        w[la_handler + 1] = addi(T0, T0, ((handler - la_handler) * 4) as i32);
        w.push(s(0, 0, T3, 2)); // sw zero, 0(t3): msip = 0
        w.push(csr(2, T5, 0x341, 0)); // csrr t5, mepc
        w.push(addi(T5, T5, 4));
        w.push(csr(1, 0, 0x341, T5)); // csrw mepc, t5
        w.push(addi(S1, S1, 1));
        w.push(0x3020_0073); // mret
        let (a, b) = lockstep(&assemble(&w), 97);
        let raised = (1..=ROUNDS).filter(|t| t % 16 == 0).count() as u64;
        assert_eq!(a.hart.x[S1 as usize], raised);
        assert_eq!(b.hart.x[S1 as usize], raised);
        let entries = b.hart.jit.entries;
        assert!(
            entries < ROUNDS as u64 * 2 / 3,
            "{entries} entries into translated code for {ROUNDS} rounds"
        );
        #[cfg(feature = "counters")]
        {
            // Every return from translated code has one reason; here mostly the stop
            // each enabling write asks for.
            let c = &b.hart.counters.now;
            let exits = [
                c.exit_stop,
                c.exit_other_page,
                c.exit_cold,
                c.exit_untranslated,
                c.exit_translated,
            ];
            assert_eq!(exits.iter().sum::<u64>(), c.jit_entries, "{exits:?}");
            assert!(c.exit_stop >= raised, "{exits:?}");
        }
    }

    /// The CSR instructions Linux runs most go without the helper. In S-mode with Sv39
    /// paging (entered by `mret`; a user gigapage aliases RAM), a loop that saves and
    /// clears SIE (`csrrci`), sets and clears SUM and MXR with a register (as around every
    /// copy from user memory) with a load from the user page after each (one succeeds,
    /// one faults: the data context must follow SUM, or the load hits the TLB entry the
    /// first one filled), clears and sets FS (so that reads of `sstatus` see SD come and
    /// go), clears everything writable at once (`csrrwi`, SUM included, then a load that
    /// must fault), swaps `sscratch` (as at every trap), writes and reads `sepc`, `scause`
    /// and `stval`, reads `mscratch` (illegal from S) and sets SIE again (`csrsi`, the
    /// helper's: the interpreter looks for a pending interrupt after it; each trapping
    /// instruction is followed by a jump, so that a block starts after it) — once with the
    /// guest registers in a block's host registers and once in the global ones — agrees
    /// with the interpreter at every step, the CSRs and the data context included. The
    /// M-mode handler skips each trapping instruction (three a round) with its own CSR
    /// instructions; a supervisor software interrupt raised while SIE is clear is taken
    /// right after the `csrsi` (one a round). Translated code calls the helper for fewer
    /// than four instructions a round (the illegal read, the SIE set, the two `sip`
    /// writes): 1,151 calls for 300 rounds, against 3,954 when every CSR instruction went
    /// to it.
    #[test]
    fn csr_instructions_linux_runs_most_stay_in_translated_code() {
        const ROUNDS: usize = 300;
        const SSTATUS: u32 = 0x100;
        const SSCRATCH: u32 = 0x140;
        const TABLE: usize = 64 << 10;
        let or = |rd: u32, a: u32, b: u32| r(0, b, a, 6, rd, 0x33);
        for (a4, a5) in [(A4, A5), (A0, A1)] {
            let mut w = Vec::new();
            let la_handler = set_trap_handler(&mut w);
            w.extend(li32(A6, (1 << 18) | (1 << 19))); // SUM | MXR
            w.extend(li32(A7, 3 << 13)); // FS
            w.extend(li32(S0, 0x6000_4000));
            // s0 = 0xc000_8000: the user alias of RAM_BASE + 32 KiB.
            w.push(slli(S0, S0, 1));
            // satp = Sv39 with the table at RAM_BASE + TABLE.
            w.extend(li32(
                T0,
                ((crate::board::RAM_BASE as usize + TABLE) >> 12) as i32,
            ));
            w.push(addi(T2, 0, 8));
            w.push(slli(T2, T2, 60));
            w.push(or(T0, T0, T2));
            w.push(csr(1, 0, 0x180, T0)); // csrw satp, t0
                                          // The supervisor software interrupt, delegated, enabled, handled at stvec.
            let la_s_handler = w.len();
            w.push(0x0000_0297); // auipc t0, 0
            w.push(0); // addi t0, t0, s_handler - la_s_handler
            w.push(csr(1, 0, 0x105, T0)); // csrw stvec, t0
            w.push(addi(T0, 0, 2));
            w.push(csr(2, 0, 0x303, T0)); // csrs mideleg, t0
            w.push(csr(2, 0, 0x304, T0)); // csrs mie, t0
            w.extend(li32(T0, 0x800)); // MPP = S
            w.push(csr(2, 0, 0x300, T0)); // csrs mstatus, t0
            w.push(0x0000_0297); // auipc t0, 0
            w.push(addi(T0, T0, 16));
            w.push(csr(1, 0, 0x341, T0)); // csrw mepc, t0
            w.push(0x3020_0073); // mret: on in S-mode
            w.push(addi(T1, 0, ROUNDS as i32));
            let top = w.len();
            w.extend([
                csr(2, a4, 0x340, 0),   // csrr a4, mscratch: illegal, skipped
                jal(4, 0),              // (a jump target after each trap: a block starts)
                csr(7, a4, SSTATUS, 2), // csrrci a4, sstatus, SIE
                add(a5, a5, a4),
                csr(6, 0, 0x144, 2),    // csrsi sip, SSIP: pending, not taken
                csr(2, 0, SSTATUS, A6), // csrs sstatus, a6
                load(3, a4, S0, 0),     // ld a4, 0(s0): SUM lets S-mode read it
                add(a5, a5, a4),
                csr(2, a4, SSTATUS, 0), // csrr a4, sstatus
                add(a5, a5, a4),
                csr(3, 0, SSTATUS, A6), // csrc sstatus, a6
                load(3, a4, S0, 8),     // ld a4, 8(s0): faults, skipped
                jal(4, 0),
                csr(3, a4, SSTATUS, A7), // csrrc a4, sstatus, a7: FS off
                add(a5, a5, a4),
                csr(2, a4, SSTATUS, A7), // csrrs a4, sstatus, a7: FS on
                add(a5, a5, a4),
                csr(6, 0, SSTATUS, 2), // csrsi sstatus, SIE: taken right after
                jal(4, 0),
                csr(2, 0, SSTATUS, A6), // csrs sstatus, a6
                load(3, a4, S0, 16),    // ld a4, 16(s0)
                add(a5, a5, a4),
                csr(5, a4, SSTATUS, 0), // csrrwi a4, sstatus, 0: all off, SUM too
                add(a5, a5, a4),
                load(3, a4, S0, 24), // ld a4, 24(s0): faults, skipped
                jal(4, 0),
                csr(1, T3, SSCRATCH, T3), // csrrw t3, sscratch, t3
                add(a5, a5, T3),
                csr(1, 0, 0x141, a5), // csrw sepc, a5 (bit 0 dropped)
                csr(2, a4, 0x141, 0), // csrr a4, sepc
                add(a5, a5, a4),
                csr(1, a4, 0x142, a5), // csrrw a4, scause, a5
                csr(2, a4, 0x143, a5), // csrrs a4, stval, a5
                add(a5, a5, a4),
                addi(T3, T3, 3),
            ]);
            close_loop_and_handler(&mut w, top, la_handler);
            let s_handler = w.len();
            w[la_s_handler + 1] = addi(T0, T0, ((s_handler - la_s_handler) * 4) as i32);
            w.push(csr(7, 0, 0x144, 2)); // csrci sip, SSIP
            w.push(addi(S2, S2, 1));
            w.push(0x1020_0073); // sret
            let mut image = assemble(&w);
            assert!(image.len() <= 32 << 10);
            image.resize(TABLE + 4096, 0);
            // Gigapages: the HTIF's (for the halt), RAM's, and RAM's again for the user.
            let ram = crate::board::RAM_BASE >> 12;
            let htif = crate::board::HTIF_BASE >> 30 << 18;
            for (k, pte) in [
                (1, htif << 10 | 0xcf),
                (2, ram << 10 | 0xcf),
                (3, ram << 10 | 0xdf),
            ] {
                image[TABLE + 8 * k..][..8].copy_from_slice(&pte.to_le_bytes());
            }
            let (mut a, mut b) = (machine(&image, false), machine(&image, true));
            let mut limit = 0;
            while a.halted().is_none() {
                limit += 97;
                run_both(&mut a, &mut b, limit);
                assert_eq!(
                    (a.hart.csr.clone(), a.hart.mmu.data_ctx),
                    (b.hart.csr.clone(), b.hart.mmu.data_ctx),
                    "at mcycle limit {limit}"
                );
            }
            assert_eq!((a.halted(), b.halted()), (Some(0), Some(0)));
            assert_eq!(a.hart.x[S1 as usize], 3 * ROUNDS as u64, "every trap taken");
            assert_eq!(
                a.hart.x[S2 as usize], ROUNDS as u64,
                "every interrupt taken"
            );
            assert_eq!(a.root_hash(), b.root_hash());
            let calls = b.hart.jit.helper_execs;
            assert!(
                calls <= 4 * ROUNDS as u64,
                "{calls} helper calls for {ROUNDS} rounds"
            );
        }
    }

    /// Every AMO (word and doubleword) on values at the edges of signed and unsigned
    /// order, LR and SC (succeeding, failing on another address or without a reservation,
    /// and failing after a trap dropped the reservation), each with rd, rs1 and rs2 in
    /// host registers or not and x0 among them, and atomics that cannot go inline
    /// (misaligned ones, which trap; one to a device, which faults; one to the page of the
    /// running code) — agree with the interpreter at every step, and the ones that can go inline
    /// call no helper once their TLB entries are in place.
    #[test]
    fn atomics_run_inline_and_agree_with_the_interpreter() {
        let xori = |rd: u32, rs1: u32, imm: i32| i(imm, rs1, 4, rd, 0x13);
        const ROUNDS: i32 = 200;
        for (pad, (a4, a5)) in (0..4).flat_map(|pad| [(pad, (14, 15)), (pad, (10, 11))]) {
            let mut w = Vec::new();
            let la_handler = set_trap_handler(&mut w);
            w.extend(li32(A2, 0x4000_8000));
            w.push(slli(A2, A2, 1)); // a2 = RAM_BASE + 64 KiB
            w.push(addi(A3, A2, 8));
            w.push(addi(A7, A2, 4)); // word-aligned, not doubleword
            w.push(addi(S2, A2, 2)); // misaligned for both
            w.extend(li32(T3, crate::board::UART_BASE as i32));
            w.push(0x0000_0e97); // auipc t4, 0: the code page
                                 // a5 = 0x8000_0000 (a word's most negative value, zero-extended), t2 = -1.
            w.extend(li32(a5, 1));
            w.push(slli(a5, a5, 31));
            w.push(addi(7, 0, -1));
            w.extend(std::iter::repeat_n(addi(0, 0, 0), pad));
            w.push(addi(T1, 0, ROUNDS));
            let top = w.len();
            let mut body = Vec::new();
            for (k, f5) in [0x00, 0x01, 0x04, 0x0c, 0x08, 0x10, 0x14, 0x18, 0x1c]
                .into_iter()
                .enumerate()
            {
                for f3 in [2, 3] {
                    let (base, rs2) = match k % 3 {
                        0 => (A2, a5),
                        1 => (A3, 7),
                        _ => (A7, if f3 == 2 { a5 } else { 0 }),
                    };
                    let base = if f3 == 3 && base == A7 { A3 } else { base };
                    body.push(amo(f5, a4, base, rs2, f3));
                    body.push(add(a5, a5, a4));
                    // Flip the sign now and then, and shift it through the word's.
                    body.push(xori(a5, a5, if k % 2 == 0 { -1 } else { 0x555 }));
                    body.push(slli(7, 7, 13));
                    body.push(add(7, 7, a5));
                }
            }
            body.extend([
                amo(0x00, 0, A2, a5, 3), // amoadd.d x0, a5, (a2): rd x0
                amo(0x02, a4, A2, 0, 3), // lr.d a4, (a2)
                add(a5, a5, a4),
                amo(0x03, A6, A2, a5, 3), // sc.d a6, a5, (a2): succeeds
                add(a5, a5, A6),
                amo(0x03, A6, A2, a5, 3), // sc.d again: no reservation, fails
                add(a5, a5, A6),
                amo(0x02, a4, A7, 0, 2),  // lr.w a4, (a7)
                amo(0x03, A6, A2, a5, 2), // sc.w a6, a5, (a2): another address, fails
                add(a5, a5, A6),
                amo(0x02, 0, A7, 0, 2), // lr.w x0, (a7): reserves all the same
                amo(0x03, a4, A7, a5, 2), // sc.w a4, a5, (a7): succeeds
                add(a5, a5, a4),
                amo(0x02, a4, A2, 0, 3),  // lr.d a4, (a2)
                amo(0x00, a4, S2, a5, 3), // amoadd.d a4, a5, (s2): misaligned, traps
                amo(0x03, A6, A2, a5, 3), // sc.d: the trap dropped the reservation
                add(a5, a5, A6),
                amo(0x02, a4, S2, 0, 2),  // lr.w a4, (s2): misaligned, traps
                amo(0x03, A6, S2, a5, 2), // sc.w a6, a5, (s2): misaligned, traps
                amo(0x01, a4, T3, a5, 2), // amoswap.w a4, a5, (t3): the UART
                add(a5, a5, a4),
                amo(0x00, a4, T4, a5, 3), // amoadd.d a4, a5, (t4): this code's page
                add(a5, a5, a4),
                add(a5, a5, S1),
            ]);
            w.extend(&body);
            close_loop_and_handler(&mut w, top, la_handler);
            let image = assemble(&w);
            let mut a = machine(&image, false);
            let mut b = machine(&image, true);
            let mut limit = 0;
            while a.halted().is_none() {
                limit += 997;
                run_both(&mut a, &mut b, limit);
                assert_eq!(
                    a.hart.reservation, b.hart.reservation,
                    "pad {pad}, a4 x{a4}, a5 x{a5}, limit {limit}"
                );
            }
            assert_eq!(b.halted(), Some(0));
            assert_eq!(
                b.hart.x[S1 as usize],
                4 * ROUNDS as u64,
                "four traps a round"
            );
            assert_eq!(a.root_hash(), b.root_hash());
            // A round runs 33 atomics: the three misaligned ones and the UART's trap,
            // and with the code page's run through the helper, the rest inline once the
            // TLB holds their pages; each trap's handler adds two CSR instructions.
            let atomics = body.iter().filter(|&&w| w & 0x7f == 0x2f).count();
            assert_eq!(atomics, 33);
            let helper_calls = b.hart.jit.helper_execs;
            assert!(
                helper_calls <= (5 + 2 * 4) * ROUNDS as u64 + 50,
                "{helper_calls} helper calls for {} atomics",
                atomics * ROUNDS as usize
            );
        }
    }

    #[test]
    fn bench_programs_agree_with_the_interpreter_at_every_step() {
        for p in [
            integer_loop(3_000, Platform::Cmvm),
            memory_loop(3_000, Platform::Cmvm),
        ] {
            // Strides that end runs inside blocks, at block ends and across many blocks.
            for stride in [1, 7, 37, 1000] {
                let points = (1..=p.instructions + stride).step_by(stride as usize);
                agree_at(&p.image, points, |_| {});
            }
        }
    }

    /// A guest yield (HTIF device 2) stops the run right after the storing instruction,
    /// at the same `mcycle` with and without translation; the host then changes a drive
    /// and the guest, run on, reads the new contents. Stopping at the yield, snapshotting,
    /// loading and going on ends in the same state as going on directly.
    #[test]
    fn a_yield_stops_at_the_same_mcycle_translated_or_not_and_resumes() {
        use crate::machine::{Break, FlashConfig};
        let hot_loop = |w: &mut Vec<u32>| {
            w.extend(li32(T2, 3000));
            let top = w.len();
            w.push(addi(A0, A0, 1));
            w.push(addi(T2, T2, -1));
            w.push(b((top as i32 - w.len() as i32) * 4, 0, T2, 1)); // bne t2, zero, top
        };
        let mut w = Vec::new();
        hot_loop(&mut w);
        yield_5(&mut w, T0, T1);
        // ld a1, 0(flash): the flash drive lies at 0x8040_0000 above 4 MiB of RAM.
        w.extend(li32(T0, 0x4020_0000));
        w.push(slli(T0, T0, 1));
        w.push((T0 << 15) | (3 << 12) | (A1 << 7) | 0x03);
        hot_loop(&mut w);
        w.extend(halt(crate::bench::Platform::Cmvm));
        let image = assemble(&w);
        let build = |jit: bool| {
            let mut m = Machine::new(&MachineConfig {
                ram_length: 4 << 20,
                ram_image: Some(image.clone()),
                flash_drives: vec![FlashConfig {
                    label: "input".into(),
                    image: vec![0; 4096],
                    shared: false,
                }],
                ..MachineConfig::default()
            })
            .unwrap();
            m.hart.set_jit(jit);
            m
        };
        let value = 0x1234_5678_9abc_def0u64;
        let mut ends = Vec::new();
        let mut ready_points = Vec::new();
        for jit in [false, true] {
            let mut m = build(jit);
            assert_eq!(m.run(u64::MAX), Break::Yielded(5));
            ready_points.push((m.mcycle(), m.hart.pc, m.root_hash()));
            assert_eq!(m.bus.devices.htif.yielded, None);
            assert!(m.bus.flash[0].mem.write_bytes(0, &value.to_le_bytes()));
            assert_eq!(m.run(u64::MAX), Break::Halted(0));
            assert_eq!(m.hart.x[A1 as usize], value);
            assert_eq!(m.hart.x[A0 as usize], 6000);
            ends.push((m.mcycle(), m.root_hash()));
        }
        assert_eq!(ready_points[0], ready_points[1]);
        assert_eq!(ends[0], ends[1]);
        // Through a snapshot taken at the yield.
        let mut m = build(true);
        let config = crate::snapshot::SnapshotConfig::from_config(&MachineConfig {
            ram_length: 4 << 20,
            ram_image: Some(image.clone()),
            flash_drives: vec![FlashConfig {
                label: "input".into(),
                image: vec![0; 4096],
                shared: false,
            }],
            ..MachineConfig::default()
        });
        assert_eq!(m.run(u64::MAX), Break::Yielded(5));
        let files = crate::snapshot::encode(&mut m, &config).unwrap().to_map();
        let mut resumed = crate::snapshot::load_files(&files).unwrap().machine;
        assert_eq!(resumed.root_hash(), ready_points[0].2);
        assert!(resumed.bus.flash[0]
            .mem
            .write_bytes(0, &value.to_le_bytes()));
        assert_eq!(resumed.run(u64::MAX), Break::Halted(0));
        assert_eq!((resumed.mcycle(), resumed.root_hash()), ends[0]);
    }

    /// Loads from a flash drive go inline, as RAM loads do (a guest copies its drives into
    /// its page cache with millions of them), and still read the drive's bytes when the
    /// drive's host memory moves between runs: the TLB entries made for the old place are
    /// dropped before translated code runs again. Translated and interpreted agree.
    #[test]
    fn flash_loads_go_inline_and_follow_the_drive_s_memory() {
        use crate::machine::Break;
        let mut w = Vec::new();
        // t0 = the flash drive, at 0x8040_0000 above 4 MiB of RAM.
        w.extend(li32(T0, 0x4020_0000));
        w.push(slli(T0, T0, 1));
        let hot_loop = |w: &mut Vec<u32>| {
            w.extend(li32(T2, 3000));
            let top = w.len();
            w.push(load(3, A1, T0, 8)); // ld a1, 8(t0)
            w.push(load(4, A2, T0, 2047)); // lbu a2, 2047(t0)
            w.push(add(A0, A0, A1));
            w.push(add(A3, A3, A2));
            w.push(addi(T2, T2, -1));
            w.push(b((top as i32 - w.len() as i32) * 4, 0, T2, 1)); // bne t2, zero, top
        };
        hot_loop(&mut w);
        yield_5(&mut w, T1, A4);
        hot_loop(&mut w);
        w.extend(halt(Platform::Cmvm));
        let image = assemble(&w);
        let drive = |word: u64, byte: u8| {
            let mut bytes = vec![0u8; 4096];
            bytes[8..16].copy_from_slice(&word.to_le_bytes());
            bytes[2047] = byte;
            bytes
        };
        let mut ends = Vec::new();
        for jit in [false, true] {
            let mut m = Machine::new(&MachineConfig {
                ram_length: 4 << 20,
                ram_image: Some(image.clone()),
                flash_drives: vec![crate::machine::FlashConfig {
                    label: "input".into(),
                    image: drive(7, 3),
                    shared: false,
                }],
                ..MachineConfig::default()
            })
            .unwrap();
            m.hart.set_jit(jit);
            assert_eq!(m.run(u64::MAX), Break::Yielded(5));
            assert_eq!(
                (m.hart.x[A0 as usize], m.hart.x[A3 as usize]),
                (21_000, 9_000)
            );
            if jit {
                assert!(
                    m.hart.jit.helper_loads < 10,
                    "{} flash loads went through the helper",
                    m.hart.jit.helper_loads
                );
            }
            // The drive's bytes move to other host memory (as a new mapping would), with
            // other contents; the old memory stays alive, so stale entries would read it.
            let mut moved = crate::memory::MemRange::from_vec(
                m.bus.flash[0].mem.start,
                drive(11, 5),
                m.bus.flash[0].mem.len(),
            );
            std::mem::swap(&mut m.bus.flash[0].mem, &mut moved);
            assert_eq!(m.run(u64::MAX), Break::Halted(0));
            assert_eq!(
                (m.hart.x[A0 as usize], m.hart.x[A3 as usize]),
                (21_000 + 33_000, 9_000 + 15_000)
            );
            ends.push((m.mcycle(), m.hart.x, m.root_hash()));
            drop(moved);
        }
        assert_eq!(ends[0], ends[1]);
    }
}
