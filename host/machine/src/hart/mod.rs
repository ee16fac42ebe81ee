//! The hart: registers, the fetch–execute loop, traps and interrupts.
//!
//! Each instruction is decoded once per physical address into an [`Insn`] (see
//! [`dcache`]) and executed by one `match` over its flat opcode ([`Insn::code`]) or, for
//! the rarer operations, over its [`Op`]; the extension files
//! (`rv64i`, `m`, `a`, `float`, `c`, `zicsr`, `system`) each decode and execute their own
//! part of the ISA, in the order and with the names of the RISC-V manual. Virtual memory
//! goes through a software TLB ([`mmu`]). On x86-64 Linux hosts, hot integer blocks also
//! run as translated code ([`jit`]), a cache that never changes a result.

pub mod a;
pub mod c;
mod counters;
pub mod csr;
pub mod dcache;
pub mod float;
pub mod jit;
pub mod m;
pub mod mmu;
pub mod rv64i;
pub mod system;
pub mod zicsr;

use crate::bus::Bus;
use crate::state::{put_u64, put_u8, Reader, StateError};
use counters::count;
use csr::*;

/// A privilege level. The discriminants are the architectural encoding (that of
/// `mstatus.MPP`, the `ecall` cause offset and the snapshot's state byte), and the derived
/// order is the privilege order (`User < Supervisor < Machine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Privilege {
    /// User mode (encoding 0).
    User = 0,
    /// Supervisor mode (encoding 1).
    Supervisor = 1,
    /// Machine mode (encoding 3; 2 is reserved).
    Machine = 3,
}

impl Privilege {
    /// The two-bit architectural encoding.
    #[inline(always)]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The level encoded as `bits`; `None` for the reserved encoding 2 and anything wider
    /// than two bits.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::User),
            1 => Some(Self::Supervisor),
            3 => Some(Self::Machine),
            _ => None,
        }
    }

    /// The level in `mstatus.MPP`. The field is WARL and every write legalises it (the
    /// reserved 2 is never stored), so the fallback to User is never taken on a legal
    /// `mstatus`.
    #[inline]
    pub fn from_mpp(mstatus: u64) -> Self {
        Self::from_bits(((mstatus & MSTATUS_MPP) >> 11) as u8).unwrap_or(Self::User)
    }

    /// The level in `mstatus.SPP` (User or Supervisor).
    #[inline]
    pub fn from_spp(mstatus: u64) -> Self {
        if mstatus & MSTATUS_SPP != 0 {
            Self::Supervisor
        } else {
            Self::User
        }
    }
}

/// Exception causes (`mcause` with the interrupt bit clear).
pub mod cause {
    /// Instruction access fault.
    pub const FETCH_ACCESS: u64 = 1;
    /// Illegal instruction.
    pub const ILLEGAL: u64 = 2;
    /// Breakpoint.
    pub const BREAKPOINT: u64 = 3;
    /// Load address misaligned.
    pub const LOAD_MISALIGNED: u64 = 4;
    /// Load access fault.
    pub const LOAD_ACCESS: u64 = 5;
    /// Store/AMO address misaligned.
    pub const STORE_MISALIGNED: u64 = 6;
    /// Store/AMO access fault.
    pub const STORE_ACCESS: u64 = 7;
    /// Environment call from U-mode (S-mode is +1, M-mode +3).
    pub const ECALL_U: u64 = 8;
    /// Instruction page fault.
    pub const FETCH_PAGE: u64 = 12;
    /// Load page fault.
    pub const LOAD_PAGE: u64 = 13;
    /// Store/AMO page fault.
    pub const STORE_PAGE: u64 = 15;
}

/// A synchronous exception: what goes into `xcause` and `xtval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    /// The exception code.
    pub cause: u64,
    /// The trap value (faulting address, instruction bits, ...).
    pub tval: u64,
}

impl Exception {
    /// Illegal instruction with the instruction's bits as `tval`.
    pub fn illegal(raw: u32) -> Self {
        Self {
            cause: cause::ILLEGAL,
            tval: raw as u64,
        }
    }
}

/// The operation of a decoded instruction, grouped by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A decode-cache slot not decoded yet.
    Undecoded,
    /// The fetch faulted (the exception is in `Hart::fetch_fault`); never cached.
    FetchFault,
    /// An encoding the machine does not implement: illegal instruction.
    Illegal,
    /// RV64I.
    I(rv64i::I),
    /// M.
    M(m::M),
    /// A.
    A(a::A),
    /// F and D.
    F(float::F),
    /// Zicsr.
    Csr(zicsr::Csr),
    /// Privileged instructions, fences, ecall/ebreak.
    Sys(system::Sys),
}

/// One decoded instruction. Compressed instructions decode into the base operation they
/// expand to, with `len = 2`. Laid out as one aligned 16-byte block so that copying it
/// out of the decode cache is a single vector move (field loads then forward from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct Insn {
    /// What to do.
    pub op: Op,
    /// Destination register.
    pub rd: u8,
    /// First source register.
    pub rs1: u8,
    /// Second source register.
    pub rs2: u8,
    /// Third source register (fused multiply-add).
    pub rs3: u8,
    /// Length in bytes (2 or 4).
    pub len: u8,
    /// A flat one-byte opcode for the hot operations (RV64I except loads and stores, and
    /// M), or 0. The hot loop reaches their executors through one jump table instead of
    /// two (extension tag, then operation). Set only by [`decode`]; 0 means "dispatch on
    /// `op`", so an `Insn` built any other way still executes correctly. It sits in what
    /// was padding (before `imm`), so `Insn` stays 16 bytes.
    pub code: u8,
    /// Immediate (for F/D arithmetic: the rounding-mode field).
    pub imm: i32,
    /// The instruction bits as fetched (16 bits for compressed), for `mtval`.
    pub raw: u32,
}

impl Insn {
    /// An undecoded slot.
    pub const UNDECODED: Insn = Insn {
        op: Op::Undecoded,
        rd: 0,
        rs1: 0,
        rs2: 0,
        rs3: 0,
        len: 4,
        imm: 0,
        raw: 0,
        code: 0,
    };

    /// An illegal instruction with bits `raw` of length `len`.
    pub fn illegal(raw: u32, len: u8) -> Insn {
        Insn {
            op: Op::Illegal,
            len,
            raw,
            ..Insn::UNDECODED
        }
    }

    /// The standard 32-bit fields of `raw` with operation `op` and immediate `imm`.
    pub fn r(op: Op, raw: u32, imm: i32) -> Insn {
        Insn {
            op,
            rd: ((raw >> 7) & 31) as u8,
            rs1: ((raw >> 15) & 31) as u8,
            rs2: ((raw >> 20) & 31) as u8,
            rs3: (raw >> 27) as u8,
            len: 4,
            imm,
            raw,
            code: 0,
        }
    }
}

/// Decodes a 32-bit instruction, or a compressed one in the low 16 bits.
pub fn decode(raw: u32) -> Insn {
    let mut insn = decode_op(raw);
    insn.code = flat_code(insn.op);
    insn
}

/// The first flat opcode of M (after the 50 RV64I operations).
const FLAT_M: u8 = 1 + rv64i::I::Fence as u8 + 1;

/// Generates the flat opcode constants and [`Hart::execute`], whose single `match` on
/// [`Insn::code`] calls the RV64I and M executors with a constant operation (so each arm
/// is that operation's code alone), and falls back to the two-level match otherwise.
macro_rules! flat_dispatch {
    (I: [$($i:ident),* $(,)?], M: [$($m:ident),* $(,)?] $(,)?) => {
        /// Flat opcodes, named after their operation.
        #[allow(non_upper_case_globals)]
        mod flat {
            use super::m::M;
            use super::rv64i::I;
            $(pub const $i: u8 = 1 + I::$i as u8;)*
            /// M operations.
            pub mod m {
                use super::M;
                $(pub const $m: u8 = super::super::FLAT_M + M::$m as u8;)*
            }
        }

        /// Every flat opcode with its operation, for the tests.
        #[cfg(test)]
        const FLAT_ALL: &[(u8, Op)] = &[
            $((flat::$i, Op::I(rv64i::I::$i)),)*
            $((flat::m::$m, Op::M(m::M::$m)),)*
        ];

        /// The flat opcode of `op` (see [`Insn::code`]), 0 if it has none.
        const fn flat_code(op: Op) -> u8 {
            match op {
                $(Op::I(rv64i::I::$i) => flat::$i,)*
                $(Op::M(m::M::$m) => flat::m::$m,)*
                _ => 0,
            }
        }

        impl Hart {
            /// Executes one decoded instruction; returns the next `pc`.
            #[inline(always)]
            fn execute(&mut self, bus: &mut Bus, d: &Insn) -> Result<u64, Exception> {
                let next = self.pc.wrapping_add(d.len as u64);
                match d.code {
                    $(flat::$i => self.exec_i(bus, rv64i::I::$i, d, next),)*
                    $(flat::m::$m => Ok(self.exec_m(m::M::$m, d, next)),)*
                    _ => self.execute_nested(bus, d, next),
                }
            }
        }
    };
}

flat_dispatch! {
    I: [
        // Not the loads and stores: a copy of the TLB path per operation made the hot
        // loop large enough that the integer loop lost a third of its speed for a tenth
        // gained on the memory loop.
        Lui, Auipc, Jal, Jalr, Beq, Bne, Blt, Bge, Bltu, Bgeu, Addi, Slti, Sltiu, Xori, Ori,
        Andi, Slli, Srli, Srai, Add, Sub, Sll, Slt, Sltu, Xor, Srl, Sra, Or, And, Addiw, Slliw,
        Srliw, Sraiw, Addw, Subw, Sllw, Srlw, Sraw, Fence,
    ],
    M: [Mul, Mulh, Mulhsu, Mulhu, Div, Divu, Rem, Remu, Mulw, Divw, Divuw, Remw, Remuw],
}

/// [`decode`] without the flat opcode.
fn decode_op(raw: u32) -> Insn {
    if raw & 3 != 3 {
        return c::decode(raw as u16);
    }
    match (raw >> 2) & 31 {
        0x03 if (raw >> 12) & 7 == 1 => system::decode(raw),
        0x0c | 0x0e if raw >> 25 == 1 => m::decode(raw),
        0x00 | 0x03 | 0x04 | 0x05 | 0x06 | 0x08 | 0x0c | 0x0d | 0x0e | 0x18 | 0x19 | 0x1b => {
            rv64i::decode(raw)
        }
        0x0b => a::decode(raw),
        0x01 | 0x09 | 0x10 | 0x11 | 0x12 | 0x13 | 0x14 => float::decode(raw),
        0x1c => {
            if (raw >> 12) & 7 == 0 {
                system::decode(raw)
            } else {
                zicsr::decode(raw)
            }
        }
        _ => Insn::illegal(raw, 4),
    }
}

/// Why [`Hart::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The guest halted through HTIF.
    Halted,
    /// The guest yielded through HTIF (`Bus::devices.htif.yielded` holds its data).
    Yielded,
    /// `mcycle` reached the limit.
    Limit,
    /// The guest submitted the offload request with this tag.
    OffloadRequest(u64),
    /// `mcycle` reached the wall of the unanswered offload request with this tag.
    OffloadWaiting(u64),
}

/// [`Hart::reservation`] when no LR reservation is held: LR reserves only aligned
/// addresses, so an odd value never matches an SC's.
pub(crate) const NO_RESERVATION: u64 = 1;

/// The architectural state of the hart plus the caches that speed it up.
///
/// `repr(C)` so that what translated code reads on nearly every instruction lies within
/// 256 bytes, which it reaches with one-byte displacements from a biased hart pointer
/// (`jit::compile`'s `BIAS`, whose checks fail the build if the layout stops fitting): the
/// TLB contexts (last in `mmu`), `env`, `stop`, `mcycle`, `pc`, then the first integer
/// registers. The order is not architectural.
#[derive(Debug)]
#[repr(C)]
pub struct Hart {
    /// The translation caches (their contexts last: see above).
    mmu: mmu::Mmu,
    /// Pointers for translated code ([`jit::Env`]), set on every entry to it.
    env: jit::Env,
    /// The inner loop runs while `mcycle < stop`; events that may unmask an interrupt
    /// set it to 0 so that the outer loop looks again.
    stop: u64,
    /// Cycle counter: one per retired instruction or trap (and jumps over idle WFI).
    pub mcycle: u64,
    /// Program counter.
    pub pc: u64,
    /// Integer registers; `x[0]` is kept at zero.
    pub x: [u64; 32],
    /// Floating-point registers (single values NaN-boxed).
    pub f: [u64; 32],
    /// Current privilege level.
    pub prv: Privilege,
    /// The CSRs.
    pub csr: Csrs,
    /// `mcycle - minstret` (wrapping): cycles spent on traps and idle waits, less what
    /// writes to `minstret` added.
    pub non_retired: u64,
    /// The (virtual) address LR reserved, or [`NO_RESERVATION`]. A plain word, not an
    /// `Option`, so that translated code reads and writes it (`jit::compile`).
    reservation: u64,
    /// Cycles skipped asleep in WFI since this hart was built (or its machine loaded):
    /// host bookkeeping for stall detection, not architectural state (never saved nor
    /// hashed), and as deterministic as `mcycle`.
    pub idle_cycles: u64,
    /// The `limit` of the current [`Hart::run`], or the offload channel's wall if that
    /// comes first (WFI never sleeps past it).
    limit: u64,
    /// The exception of the last faulting fetch (see [`Op::FetchFault`]).
    fetch_fault: Exception,
    /// Decoded instructions, by physical page.
    dcache: dcache::DecodeCache,
    /// Translated code (a cache over `dcache`'s pages).
    jit: jit::Jit,
    /// Event counters (feature `counters`).
    #[cfg(feature = "counters")]
    counters: counters::Report,
}

impl Hart {
    /// A hart at reset for a RAM of `ram_length` bytes: M-mode, `pc = RAM_BASE`.
    pub fn new(ram_length: u64) -> Self {
        Self {
            x: [0; 32],
            f: [0; 32],
            pc: crate::board::RAM_BASE,
            prv: Privilege::Machine,
            csr: Csrs::new(),
            mcycle: 0,
            non_retired: 0,
            idle_cycles: 0,
            reservation: NO_RESERVATION,
            stop: 0,
            limit: 0,
            fetch_fault: Exception { cause: 0, tval: 0 },
            mmu: mmu::Mmu::new(),
            env: jit::Env::default(),
            dcache: dcache::DecodeCache::new(ram_length),
            jit: jit::Jit::new(),
            #[cfg(feature = "counters")]
            counters: counters::Report::default(),
        }
    }

    /// `minstret`: instructions retired.
    pub fn minstret(&self) -> u64 {
        self.mcycle.wrapping_sub(self.non_retired)
    }

    /// Runs until `mcycle` reaches `limit` or the guest halts or yields, or the offload
    /// channel has a request to report or must wait for an answer.
    pub fn run(&mut self, bus: &mut Bus, limit: u64) -> Stop {
        if !self.mmu.layout_is(bus) {
            // Flash entries filled on a bus laid out otherwise: their deltas would lead
            // elsewhere on this one (translated code reads through them). The bus is the
            // same for the whole call, so once here is enough.
            self.flush_tlb();
        }
        loop {
            #[cfg(feature = "counters")]
            {
                self.sync_counters();
                self.counters.maybe_print(self.mcycle);
            }
            self.sync_device_writes(bus);
            if bus.devices.htif.halt.is_some() {
                return Stop::Halted;
            }
            if bus.devices.htif.yielded.is_some() {
                return Stop::Yielded;
            }
            // The offload channel (devices/offload.rs, "Timing"): deliver what is due at
            // this cycle (so the state at a cycle always includes it), report a
            // submission, and never run past the wall of an unanswered request, exactly
            // as if `limit` were there.
            let mut wall = u64::MAX;
            if bus.offload.is_some() {
                if bus.deliver_offload(self.mcycle) {
                    self.sync_device_writes(bus);
                }
                let channel = bus.offload.as_mut().expect("checked");
                if let Some(tag) = channel.submitted.pop_front() {
                    return Stop::OffloadRequest(tag);
                }
                if let Some((at, tag)) = channel.wall() {
                    if self.mcycle >= at && self.mcycle < limit {
                        return Stop::OffloadWaiting(tag);
                    }
                    wall = at;
                }
            }
            if self.mcycle >= limit {
                return Stop::Limit;
            }
            self.limit = limit.min(wall);
            if let Some(int) = self.pending_interrupt(bus) {
                self.take_trap(int, 0, true);
                self.mcycle += 1;
                self.non_retired = self.non_retired.wrapping_add(1);
                continue;
            }
            // Run until the timer could fire (if nothing else unmasks an interrupt first),
            // or the offload channel delivers.
            let timer = if self.csr.mie & MIP_MTIP != 0 && !bus.devices.clint.mtip(self.mcycle) {
                bus.devices.clint.timer_deadline()
            } else {
                u64::MAX
            };
            let delivery = bus.offload.as_ref().map_or(u64::MAX, |c| c.next_delivery());
            // Within 2^62 of `mcycle` (centuries of guest time): translated code counts
            // `mcycle - stop` as a signed number (`jit::compile::MCYCLE`).
            self.stop = self
                .limit
                .min(timer)
                .min(delivery)
                .min(self.mcycle.saturating_add(1 << 62));
            self.run_inner(bus);
        }
    }

    /// The hot loop: fetch (through the decode cache), execute, count.
    fn run_inner(&mut self, bus: &mut Bus) {
        while self.mcycle < self.stop {
            if self.jit.enabled() && self.run_jit(bus) {
                continue;
            }
            let insn = self.fetch(bus);
            count!(self, interpreted);
            let result = self.execute(bus, &insn);
            match result {
                Ok(next) => {
                    // A block may start here: after a jump or branch, after what no block
                    // holds, or after what translated code left to the interpreter.
                    self.jit.candidate = jit::block_boundary(insn.op) || self.jit.resume;
                    self.jit.resume = false;
                    self.pc = next;
                }
                Err(e) => {
                    self.take_trap(e.cause, e.tval, false);
                    self.non_retired = self.non_retired.wrapping_add(1);
                    self.jit.candidate = true;
                }
            }
            self.x[0] = 0;
            self.mcycle += 1;
        }
    }

    /// Executes a decoded instruction by its extension, then its operation: the path for
    /// everything without a flat opcode.
    #[inline(always)]
    fn execute_nested(&mut self, bus: &mut Bus, d: &Insn, next: u64) -> Result<u64, Exception> {
        match d.op {
            Op::I(op) => self.exec_i(bus, op, d, next),
            Op::M(op) => Ok(self.exec_m(op, d, next)),
            Op::A(op) => self.exec_a(bus, op, d, next),
            Op::F(op) => self.exec_f(bus, op, d, next),
            Op::Csr(op) => self.exec_csr(bus, op, d, next),
            Op::Sys(op) => self.exec_sys(bus, op, d, next),
            Op::FetchFault => Err(self.fetch_fault),
            Op::Illegal | Op::Undecoded => Err(Exception::illegal(d.raw)),
        }
    }

    /// Executes, for translated code, the instruction `raw` at `pc + delta` with `mcycle`
    /// advanced by `retired`, as the interpreter's loop would. Returns 1 when the block
    /// may go on, with `pc` and `mcycle` left as they were (the block counts); 2 when it
    /// must leave, with `pc` and `mcycle` where the interpreter's loop leaves them: the
    /// instruction trapped (the trap is taken), moved `stop` (an interrupt may be due, or
    /// the machine halted), wrote into a page with decoded code (the block may be
    /// stale), or wrote `mcycle` itself.
    pub(super) fn exec_for_jit(
        &mut self,
        bus: &mut Bus,
        raw: u32,
        delta: u64,
        retired: u64,
    ) -> u64 {
        let insn = decode(raw);
        #[cfg(feature = "counters")]
        {
            let c = &mut self.counters.now;
            match insn.op {
                Op::A(a::A::LrW | a::A::LrD | a::A::ScW | a::A::ScD) => c.helper_lrsc += 1,
                Op::A(_) => c.helper_amo += 1,
                Op::Csr(_) => c.helper_csr += 1,
                Op::F(_) => c.helper_fp += 1,
                Op::I(rv64i::I::Sb | rv64i::I::Sh | rv64i::I::Sw | rv64i::I::Sd) => {
                    c.helper_store += 1
                }
                _ => c.helper_other += 1,
            }
        }
        let (pc, mcycle, stop) = (self.pc, self.mcycle, self.stop);
        let writes = self.dcache.code_writes();
        self.pc = pc.wrapping_add(delta);
        self.mcycle = mcycle + retired;
        let result = self.execute(bus, &insn);
        self.x[0] = 0;
        match result {
            Ok(next)
                if self.stop == stop
                    && self.dcache.code_writes() == writes
                    && self.mcycle == mcycle + retired =>
            {
                debug_assert_eq!(next, self.pc.wrapping_add(insn.len as u64));
                self.pc = pc;
                self.mcycle = mcycle;
                1
            }
            // The rest of `run_inner`'s step.
            Ok(next) => {
                self.pc = next;
                self.mcycle += 1;
                2
            }
            Err(e) => {
                self.take_trap(e.cause, e.tval, false);
                self.non_retired = self.non_retired.wrapping_add(1);
                self.jit.candidate = true;
                self.mcycle += 1;
                2
            }
        }
    }

    /// Drops what the decode cache and the translator hold for RAM that devices wrote
    /// ([`Bus::dma_log`]), and an LR reservation there, as a store by the hart would.
    /// The run loop calls it before it executes anything: devices write RAM only in a
    /// store to their registers (which ends the current block and slice of the hot loop)
    /// or at the loop's top.
    pub(crate) fn sync_device_writes(&mut self, bus: &mut Bus) {
        if bus.dma_log.is_empty() {
            return;
        }
        for (off, len) in bus.dma_log.drain(..) {
            for (piece, size) in crate::devices::virtio_console::page_pieces(off, len) {
                self.dcache.invalidate(piece, size);
            }
            let pa = crate::board::RAM_BASE + off;
            let r = self.reservation;
            if r != NO_RESERVATION && (r.wrapping_sub(pa) < len || pa.wrapping_sub(r) < 8) {
                self.reservation = NO_RESERVATION;
            }
        }
    }

    /// Asks the run loop to look at interrupts (and the halt flag) after this instruction.
    pub(crate) fn request_stop(&mut self) {
        self.stop = 0;
    }

    /// `mip` as software sees it: the writable bits plus the device lines.
    pub fn mip(&self, bus: &Bus) -> u64 {
        let (meip, seip) = bus.external_interrupts();
        let mut mip = self.csr.mip;
        if bus.devices.clint.msip {
            mip |= MIP_MSIP;
        }
        if bus.devices.clint.mtip(self.mcycle) {
            mip |= MIP_MTIP;
        }
        if meip {
            mip |= MIP_MEIP;
        }
        if seip {
            mip |= MIP_SEIP;
        }
        mip
    }

    /// The interrupt to take now, by the priority order of the privileged spec.
    fn pending_interrupt(&self, bus: &Bus) -> Option<u64> {
        let pending = self.mip(bus) & self.csr.mie;
        if pending == 0 {
            return None;
        }
        let m_enabled = self.prv < Privilege::Machine || self.csr.mstatus & MSTATUS_MIE != 0;
        let s_enabled = self.prv < Privilege::Supervisor
            || (self.prv == Privilege::Supervisor && self.csr.mstatus & MSTATUS_SIE != 0);
        let mut take = 0;
        if m_enabled {
            take |= pending & !self.csr.mideleg;
        }
        if s_enabled {
            take |= pending & self.csr.mideleg;
        }
        if take == 0 {
            return None;
        }
        // MEI, MSI, MTI, SEI, SSI, STI.
        [11u64, 3, 7, 9, 1, 5]
            .into_iter()
            .find(|&i| take >> i & 1 != 0)
    }

    /// Enters the trap handler for `cause` (an interrupt if `interrupt`).
    pub fn take_trap(&mut self, cause: u64, tval: u64, interrupt: bool) {
        #[cfg(feature = "counters")]
        {
            let c = &mut self.counters.now;
            match (interrupt, cause) {
                (true, _) => c.interrupts += 1,
                (false, 12 | 13 | 15) => c.page_faults += 1,
                _ => c.exceptions += 1,
            }
        }
        let deleg = if interrupt {
            self.csr.mideleg
        } else {
            self.csr.medeleg
        };
        let vector = |tvec: u64| {
            if interrupt && tvec & 1 != 0 {
                (tvec & !3).wrapping_add(4 * cause)
            } else {
                tvec & !3
            }
        };
        let xcause = cause | ((interrupt as u64) << 63);
        let st = self.csr.mstatus;
        if self.prv <= Privilege::Supervisor && deleg >> cause & 1 != 0 {
            self.csr.scause = xcause;
            self.csr.sepc = self.pc;
            self.csr.stval = tval;
            let spie = (st & MSTATUS_SIE != 0) as u64;
            self.csr.mstatus = (st & !(MSTATUS_SPIE | MSTATUS_SIE | MSTATUS_SPP))
                | (spie << 5)
                | ((self.prv.as_u8() as u64) << 8);
            self.pc = vector(self.csr.stvec);
            self.prv = Privilege::Supervisor;
        } else {
            self.csr.mcause = xcause;
            self.csr.mepc = self.pc;
            self.csr.mtval = tval;
            let mpie = (st & MSTATUS_MIE != 0) as u64;
            self.csr.mstatus = (st & !(MSTATUS_MPIE | MSTATUS_MIE | MSTATUS_MPP))
                | (mpie << 7)
                | ((self.prv.as_u8() as u64) << 11);
            self.pc = vector(self.csr.mtvec);
            self.prv = Privilege::Machine;
        }
        self.reservation = NO_RESERVATION;
        self.mmu
            .update_ctx(self.prv, self.csr.mstatus, self.csr.satp);
        self.request_stop();
    }

    /// Called after a write to `mstatus` (or `sstatus`): the data translation context may
    /// differ (SUM, MXR, MPRV and MPP are in it, and translated code reads it at every
    /// access). Whether the write made an interrupt takeable is `exec_csr`'s to say: it
    /// has the bus, and asks the run loop to look only then.
    pub(crate) fn on_status_write(&mut self) {
        self.mmu
            .update_ctx(self.prv, self.csr.mstatus, self.csr.satp);
    }

    /// Called after `prv` or `satp` changed: translation context and interrupt enables
    /// may differ.
    pub(crate) fn on_mode_change(&mut self) {
        self.on_status_write();
        self.request_stop();
    }

    /// Copies the counts kept outside [`counters::Report`] into it.
    #[cfg(feature = "counters")]
    fn sync_counters(&mut self) {
        self.counters.now.dcache_evictions = self.dcache.evictions;
        self.counters.now.code_resets = self.jit.resets;
    }

    /// Forgets every cached translation and decoded instruction (after a snapshot load
    /// or a wholesale memory change by the caller).
    pub fn flush_caches(&mut self) {
        count!(self, tlb_flushes);
        self.mmu.flush();
        self.dcache.flush();
        self.mmu
            .update_ctx(self.prv, self.csr.mstatus, self.csr.satp);
    }

    /// Writes integer register `rd` (writes to x0 are undone by the loop).
    #[inline(always)]
    pub(crate) fn set_x(&mut self, rd: u8, value: u64) {
        // Register fields are 5 bits wide; the mask lets the compiler drop the bounds
        // check on the hot path (it never changes a decoded index).
        self.x[(rd & 31) as usize] = value;
    }

    /// Reads integer register `r`.
    #[inline(always)]
    pub(crate) fn get_x(&self, r: u8) -> u64 {
        self.x[(r & 31) as usize]
    }

    /// Appends the canonical encoding of the architectural state (no caches).
    pub fn save_state(&self, out: &mut Vec<u8>) {
        self.x.iter().for_each(|&v| put_u64(out, v));
        self.f.iter().for_each(|&v| put_u64(out, v));
        put_u64(out, self.pc);
        put_u8(out, self.prv.as_u8());
        put_u64(out, self.mcycle);
        put_u64(out, self.non_retired);
        let reserved = self.reservation != NO_RESERVATION;
        put_u8(out, reserved as u8);
        put_u64(out, if reserved { self.reservation } else { 0 });
        self.csr.save_state(out);
    }

    /// Restores what [`Hart::save_state`] wrote, legalised as software could have left it
    /// (pc even, CSRs through [`Csrs::legalize`]), and drops every cache.
    pub fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError> {
        for v in self.x.iter_mut() {
            *v = r.u64()?;
        }
        for v in self.f.iter_mut() {
            *v = r.u64()?;
        }
        self.x[0] = 0;
        // Instructions are 2-byte aligned (IALIGN = 16): no jump can make pc odd.
        self.pc = r.u64()? & !1;
        self.prv = Privilege::from_bits(r.u8()?).ok_or(StateError::Invalid("privilege level"))?;
        self.mcycle = r.u64()?;
        self.non_retired = r.u64()?;
        let has_res = r.bool("reservation flag")?;
        let res = r.u64()?;
        // LR reserves only aligned addresses (4 or 8 bytes), so no state holds another.
        self.reservation = match has_res {
            false => NO_RESERVATION,
            true if res % 4 == 0 => res,
            true => return Err(StateError::Invalid("reservation address")),
        };
        self.csr.load_state(r)?;
        self.flush_caches();
        Ok(())
    }
}

/// With the feature on, a hart prints its totals when it goes.
#[cfg(feature = "counters")]
impl Drop for Hart {
    fn drop(&mut self) {
        self.sync_counters();
        self.counters.print_total(self.mcycle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_is_saved_as_before_and_a_misaligned_one_refused() {
        // The flag and the address follow x, f, pc, privilege, mcycle and non_retired.
        let at = 8 * 64 + 8 + 1 + 8 + 8;
        let saved = |reservation: u64| {
            let mut hart = Hart::new(1 << 20);
            hart.reservation = reservation;
            let mut out = Vec::new();
            hart.save_state(&mut out);
            out
        };
        let none = saved(NO_RESERVATION);
        assert_eq!(none[at..at + 9], [0; 9]);
        let held = saved(0x8000_1008);
        assert_eq!(held[at], 1);
        assert_eq!(held[at + 1..at + 9], 0x8000_1008u64.to_le_bytes());
        let mut back = Hart::new(1 << 20);
        back.load_state(&mut Reader::new(&held)).unwrap();
        assert_eq!(back.reservation, 0x8000_1008);
        back.load_state(&mut Reader::new(&none)).unwrap();
        assert_eq!(back.reservation, NO_RESERVATION);
        // No LR reserves an address that is not 4-byte aligned (1 would read as none).
        for bad in [1u64, 2, 0x8000_1006] {
            let mut state = held.clone();
            state[at + 1..at + 9].copy_from_slice(&bad.to_le_bytes());
            assert!(matches!(
                back.load_state(&mut Reader::new(&state)),
                Err(StateError::Invalid("reservation address"))
            ));
        }
    }

    #[test]
    fn decoded_instructions_stay_16_bytes() {
        // The decode cache holds 2048 of them per page; its memory bound assumes 16.
        assert_eq!(std::mem::size_of::<Insn>(), 16);
        // Extension tag plus operation: two bytes; the hot path dispatches on the flat
        // `code` byte instead, which must fit in the padding.
        assert_eq!(std::mem::size_of::<Op>(), 2);
    }

    #[test]
    fn flat_opcodes_are_distinct_and_match_the_operation() {
        // Each flat operation has its own nonzero code; everything else gets 0.
        let mut seen = [false; 256];
        for &(code, op) in FLAT_ALL {
            assert_eq!(flat_code(op), code, "{op:?}");
            assert!(code != 0 && !seen[code as usize], "{op:?}");
            seen[code as usize] = true;
        }
        assert_eq!(FLAT_ALL.len(), 39 + 13);
        for raw in [
            0x0020_81b3u32, // add
            0x4020_81b3,    // sub
            0x0000_0537,    // lui a0, 0
            0x0085_3503,    // ld a0, 8(a0)
            0x00a5_3423,    // sd a0, 8(a0)
            0x0220_81b3,    // mul
            0x0220_c1bb,    // divw
            0x0000_100f,    // fence.i
            0x3000_2573,    // csrr a0, mstatus
            0x0000_007b,    // illegal
            0x4505,         // c.li a0, 1
        ] {
            let d = decode(raw);
            assert_eq!(d.code, flat_code(d.op), "{raw:#x}");
        }
        assert_eq!(decode(0x0020_81b3).code, flat::Add);
        assert_eq!(decode(0x0220_81b3).code, flat::m::Mul);
        assert_eq!(decode(0x4505).code, flat::Addi); // c.li expands to addi
        assert_eq!(decode(0x3000_2573).code, 0);
        assert_eq!(decode(0x0085_3503).code, 0); // loads and stores take the nested path
        assert_eq!(decode(0x00a5_3423).code, 0);
        assert_eq!(flat::m::Remuw as usize + 1, FLAT_M as usize + 13);
        const _: () = assert!(flat::Fence < flat::m::Mul);
    }

    #[test]
    fn opcodes_route_to_their_extension() {
        assert_eq!(decode(0x0020_81b3).op, Op::I(rv64i::I::Add)); // add x3, x1, x2
        assert_eq!(decode(0x0220_81b3).op, Op::M(m::M::Mul)); // mul x3, x1, x2
        assert_eq!(decode(0x0220_81bb).op, Op::M(m::M::Mulw)); // mulw x3, x1, x2
        assert_eq!(decode(0x0000_100f).op, Op::Sys(system::Sys::FenceI));
        assert_eq!(decode(0x3000_2573).op, Op::Csr(zicsr::Csr::Rs)); // csrr a0, mstatus
        assert_eq!(decode(0x0000_007b).op, Op::Illegal);
    }
}
