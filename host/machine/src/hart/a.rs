//! A: atomic memory operations (unprivileged spec, chapter 14). With one hart every
//! AMO is trivially atomic; LR/SC keep a reservation on the virtual address, which the
//! machine drops on SC and on every trap.

use super::{cause, Exception, Hart, Insn, Op};
use crate::bus::Bus;

/// A operations; `W` ones work on sign-extended 32-bit words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum A {
    /// `lr.w`
    LrW,
    /// `sc.w`
    ScW,
    /// `amoswap.w`
    AmoswapW,
    /// `amoadd.w`
    AmoaddW,
    /// `amoxor.w`
    AmoxorW,
    /// `amoand.w`
    AmoandW,
    /// `amoor.w`
    AmoorW,
    /// `amomin.w`
    AmominW,
    /// `amomax.w`
    AmomaxW,
    /// `amominu.w`
    AmominuW,
    /// `amomaxu.w`
    AmomaxuW,
    /// `lr.d`
    LrD,
    /// `sc.d`
    ScD,
    /// `amoswap.d`
    AmoswapD,
    /// `amoadd.d`
    AmoaddD,
    /// `amoxor.d`
    AmoxorD,
    /// `amoand.d`
    AmoandD,
    /// `amoor.d`
    AmoorD,
    /// `amomin.d`
    AmominD,
    /// `amomax.d`
    AmomaxD,
    /// `amominu.d`
    AmominuD,
    /// `amomaxu.d`
    AmomaxuD,
}

impl A {
    /// Whether it works on a 32-bit word (else a doubleword).
    pub(super) fn is_word(self) -> bool {
        use A::*;
        matches!(
            self,
            LrW | ScW
                | AmoswapW
                | AmoaddW
                | AmoxorW
                | AmoandW
                | AmoorW
                | AmominW
                | AmomaxW
                | AmominuW
                | AmomaxuW
        )
    }
}

/// Decodes the AMO opcode.
pub fn decode(raw: u32) -> Insn {
    let funct5 = raw >> 27;
    let rs2 = (raw >> 20) & 31;
    let word = match (raw >> 12) & 7 {
        2 => true,
        3 => false,
        _ => return Insn::illegal(raw, 4),
    };
    let pick = |w: A, d: A| if word { w } else { d };
    let a = match funct5 {
        0b00010 if rs2 == 0 => pick(A::LrW, A::LrD),
        0b00011 => pick(A::ScW, A::ScD),
        0b00001 => pick(A::AmoswapW, A::AmoswapD),
        0b00000 => pick(A::AmoaddW, A::AmoaddD),
        0b00100 => pick(A::AmoxorW, A::AmoxorD),
        0b01100 => pick(A::AmoandW, A::AmoandD),
        0b01000 => pick(A::AmoorW, A::AmoorD),
        0b10000 => pick(A::AmominW, A::AmominD),
        0b10100 => pick(A::AmomaxW, A::AmomaxD),
        0b11000 => pick(A::AmominuW, A::AmominuD),
        0b11100 => pick(A::AmomaxuW, A::AmomaxuD),
        _ => return Insn::illegal(raw, 4),
    };
    Insn::r(Op::A(a), raw, 0)
}

impl Hart {
    /// Executes an A operation.
    pub(super) fn exec_a(
        &mut self,
        bus: &mut Bus,
        op: A,
        d: &Insn,
        next: u64,
    ) -> Result<u64, Exception> {
        use A::*;
        let addr = self.get_x(d.rs1);
        let src = self.get_x(d.rs2);
        let word = op.is_word();
        let size = if word { 4 } else { 8 };
        if addr & (size as u64 - 1) != 0 {
            // AMOs are never emulated when misaligned (their atomicity could not hold).
            let cause = if matches!(op, LrW | LrD) {
                cause::LOAD_MISALIGNED
            } else {
                cause::STORE_MISALIGNED
            };
            return Err(Exception { cause, tval: addr });
        }
        let extend = |v: u64| if word { v as i32 as i64 as u64 } else { v };
        match op {
            LrW | LrD => {
                let v = self.load(bus, addr, size)?;
                self.reservation = addr;
                self.set_x(d.rd, extend(v));
                return Ok(next);
            }
            ScW | ScD => {
                let ok = self.reservation == addr;
                self.reservation = super::NO_RESERVATION;
                if ok {
                    self.store(bus, addr, size, src)?;
                }
                self.set_x(d.rd, (!ok) as u64);
                return Ok(next);
            }
            _ => {}
        }
        // Check write permission first so that a read-only page gives a store fault.
        self.translate_store(bus, addr)?;
        let old = extend(self.load(bus, addr, size)?);
        let src = extend(src);
        let new = match op {
            AmoswapW | AmoswapD => src,
            AmoaddW | AmoaddD => old.wrapping_add(src),
            AmoxorW | AmoxorD => old ^ src,
            AmoandW | AmoandD => old & src,
            AmoorW | AmoorD => old | src,
            AmominW | AmominD => (old as i64).min(src as i64) as u64,
            AmomaxW | AmomaxD => (old as i64).max(src as i64) as u64,
            AmominuW | AmominuD => {
                if word {
                    (old as u32).min(src as u32) as u64
                } else {
                    old.min(src)
                }
            }
            _ => {
                if word {
                    (old as u32).max(src as u32) as u64
                } else {
                    old.max(src)
                }
            }
        };
        self.store(bus, addr, size, new)?;
        self.set_x(d.rd, old);
        Ok(next)
    }
}
