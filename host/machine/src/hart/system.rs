//! Privileged and environment instructions: ECALL, EBREAK, MRET, SRET, WFI, SFENCE.VMA,
//! and FENCE.I (Zifencei). Privileged spec, chapter 3.3 and 4.2.

use super::csr::*;
use super::{cause, Exception, Hart, Insn, Op, Privilege};
use crate::bus::Bus;

/// System operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sys {
    /// `ecall`
    Ecall,
    /// `ebreak`
    Ebreak,
    /// `mret`
    Mret,
    /// `sret`
    Sret,
    /// `wfi`
    Wfi,
    /// `sfence.vma`
    SfenceVma,
    /// `fence.i`
    FenceI,
}

/// Decodes SYSTEM with funct3 = 0, and MISC-MEM with funct3 = 1 (FENCE.I).
pub fn decode(raw: u32) -> Insn {
    let op = |s: Sys| Insn::r(Op::Sys(s), raw, 0);
    if raw & 0x7f == 0x0f {
        // FENCE.I ignores its rd, rs1 and imm fields (reserved for future use).
        return op(Sys::FenceI);
    }
    match raw {
        0x0000_0073 => op(Sys::Ecall),
        0x0010_0073 => op(Sys::Ebreak),
        0x3020_0073 => op(Sys::Mret),
        0x1020_0073 => op(Sys::Sret),
        0x1050_0073 => op(Sys::Wfi),
        _ if raw >> 25 == 0x09 && (raw >> 7) & 31 == 0 => op(Sys::SfenceVma),
        _ => Insn::illegal(raw, 4),
    }
}

impl Hart {
    /// Executes a system operation.
    pub(super) fn exec_sys(
        &mut self,
        bus: &mut Bus,
        op: Sys,
        d: &Insn,
        next: u64,
    ) -> Result<u64, Exception> {
        let st = self.csr.mstatus;
        let illegal = Err(Exception::illegal(d.raw));
        match op {
            Sys::Ecall => Err(Exception {
                cause: cause::ECALL_U + self.prv.as_u8() as u64,
                tval: 0,
            }),
            Sys::Ebreak => Err(Exception {
                cause: cause::BREAKPOINT,
                tval: self.pc,
            }),
            Sys::Mret => {
                if self.prv != Privilege::Machine {
                    return illegal;
                }
                let mpp = Privilege::from_mpp(st);
                let mpie = (st & MSTATUS_MPIE != 0) as u64;
                let mut new = (st & !(MSTATUS_MIE | MSTATUS_MPP)) | (mpie << 3) | MSTATUS_MPIE;
                if mpp != Privilege::Machine {
                    new &= !MSTATUS_MPRV;
                }
                self.csr.mstatus = new;
                self.prv = mpp;
                self.reservation = super::NO_RESERVATION;
                self.on_mode_change();
                Ok(self.csr.mepc)
            }
            Sys::Sret => {
                if self.prv == Privilege::User
                    || (self.prv == Privilege::Supervisor && st & MSTATUS_TSR != 0)
                {
                    return illegal;
                }
                let spp = Privilege::from_spp(st);
                let spie = (st & MSTATUS_SPIE != 0) as u64;
                let new =
                    (st & !(MSTATUS_SIE | MSTATUS_SPP | MSTATUS_MPRV)) | (spie << 1) | MSTATUS_SPIE;
                self.csr.mstatus = new;
                self.prv = spp;
                self.reservation = super::NO_RESERVATION;
                self.on_mode_change();
                Ok(self.csr.sepc)
            }
            Sys::Wfi => {
                if self.prv == Privilege::User
                    || (self.prv == Privilege::Supervisor && st & MSTATUS_TW != 0)
                {
                    return illegal;
                }
                if self.mip(bus) & self.csr.mie != 0 {
                    return Ok(next);
                }
                // Nothing can wake the hart before the timer (if enabled): jump there, or
                // to the end of this run, whichever comes first.
                let timer = if self.csr.mie & MIP_MTIP != 0 {
                    bus.devices.clint.timer_deadline()
                } else {
                    u64::MAX
                };
                // An offload delivery wakes the hart whether or not its interrupt would
                // reach `mip` (a spurious wake-up, which the spec allows, and a fixed
                // cycle either way). An unanswered request's wall is in `self.limit`.
                let delivery = bus.offload.as_ref().map_or(u64::MAX, |c| c.next_delivery());
                let wake = timer.min(delivery);
                self.request_stop();
                if wake != u64::MAX && wake <= self.limit {
                    // The wake-up happens within this run: the WFI retires (the interrupt,
                    // if enabled, is then taken with xepc = pc + 4, as the privileged spec
                    // says), and the cycles in between are idle. The loop counts the
                    // WFI's own cycle, which ends on the deadline.
                    let target = wake.max(self.mcycle + 1);
                    self.non_retired = self.non_retired.wrapping_add(target - self.mcycle - 1);
                    self.idle_cycles = self.idle_cycles.wrapping_add(target - self.mcycle - 1);
                    self.mcycle = target - 1;
                    Ok(next)
                } else {
                    // The run ends first: the WFI does not retire, so a run resumed later
                    // re-executes it and ends in the same state as an uninterrupted one.
                    let target = self.limit.max(self.mcycle + 1);
                    self.non_retired = self.non_retired.wrapping_add(target - self.mcycle);
                    self.idle_cycles = self.idle_cycles.wrapping_add(target - self.mcycle);
                    self.mcycle = target - 1;
                    Ok(self.pc)
                }
            }
            Sys::SfenceVma => {
                if self.prv == Privilege::User
                    || (self.prv == Privilege::Supervisor && st & MSTATUS_TVM != 0)
                {
                    return illegal;
                }
                #[cfg(feature = "counters")]
                if d.rs1 != 0 {
                    self.counters.now.sfence_addr += 1;
                }
                self.flush_tlb();
                Ok(next)
            }
            // Stores already invalidate the decode cache exactly, which is all FENCE.I
            // has to guarantee on one hart.
            Sys::FenceI => Ok(next),
        }
    }
}
