//! Zicsr: the CSR instructions, and the access rules of each CSR (privileged spec,
//! chapter 2 and the register chapters). A CSR the machine does not implement, an access
//! from too low a privilege, or a write to a read-only CSR is an illegal instruction.

use super::csr::{num, *};
use super::{Exception, Hart, Insn, Op, Privilege};
use crate::bus::Bus;
use crate::devices::clint::Clint;

/// CSR operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Csr {
    /// `csrrw`
    Rw,
    /// `csrrs`
    Rs,
    /// `csrrc`
    Rc,
    /// `csrrwi`
    Rwi,
    /// `csrrsi`
    Rsi,
    /// `csrrci`
    Rci,
}

/// Decodes SYSTEM with funct3 != 0. `imm` holds the CSR number.
pub fn decode(raw: u32) -> Insn {
    let c = match (raw >> 12) & 7 {
        1 => Csr::Rw,
        2 => Csr::Rs,
        3 => Csr::Rc,
        5 => Csr::Rwi,
        6 => Csr::Rsi,
        7 => Csr::Rci,
        _ => return Insn::illegal(raw, 4),
    };
    Insn::r(Op::Csr(c), raw, (raw >> 20) as i32)
}

impl Hart {
    /// Executes a CSR instruction.
    pub(super) fn exec_csr(
        &mut self,
        bus: &mut Bus,
        op: Csr,
        d: &Insn,
        next: u64,
    ) -> Result<u64, Exception> {
        let csr = d.imm as u16;
        let illegal = Exception::illegal(d.raw);
        let operand = match op {
            Csr::Rw | Csr::Rs | Csr::Rc => self.get_x(d.rs1),
            _ => d.rs1 as u64,
        };
        // CSRRW[I] always write (and read only if rd != 0); CSRRS/C[I] with a zero
        // operand register/immediate do not write.
        let writes = matches!(op, Csr::Rw | Csr::Rwi) || d.rs1 != 0;
        let reads = !matches!(op, Csr::Rw | Csr::Rwi) || d.rd != 0;
        if (csr >> 8) & 3 > self.prv.as_u8() as u16 || (writes && csr >> 10 == 3) {
            return Err(illegal);
        }
        let old = if reads {
            self.read_csr(bus, csr).ok_or(illegal)?
        } else {
            // The CSR must still exist.
            self.read_csr(bus, csr).ok_or(illegal)?;
            0
        };
        if writes {
            // The read-modify-write of `mip` uses the software-writable SEIP bit alone, not
            // its OR with the PLIC's line (privileged spec, "Machine Interrupt Registers"):
            // otherwise an M-mode `csrs mip, STIP` (OpenSBI raising the supervisor timer)
            // made while the PLIC's line is high latches SEIP on for good, and S-mode takes
            // external interrupts that no claim can clear, forever.
            let base = if csr == num::MIP {
                (old & !MIP_SEIP) | (self.csr.mip & MIP_SEIP)
            } else {
                old
            };
            let new = match op {
                Csr::Rw | Csr::Rwi => operand,
                Csr::Rs | Csr::Rsi => base | operand,
                Csr::Rc | Csr::Rci => base & !operand,
            };
            // For CSRRW, `old` was not read when rd = 0; the write does not need it.
            let status = self.csr.mstatus;
            self.write_csr(csr, new).ok_or(illegal)?;
            // A status write makes an interrupt takeable only by setting MIE or SIE, with
            // one pending: only then must the run loop look after this instruction.
            // Nothing else in the register changes what may be taken (and it moves
            // neither the timer's deadline nor a delivery, which `stop` holds): Linux
            // clears and sets SIE and SUM millions of times a build, and translated code
            // goes on through those writes.
            if matches!(csr, num::SSTATUS | num::MSTATUS)
                && self.csr.mstatus & !status & (MSTATUS_MIE | MSTATUS_SIE) != 0
                && self.pending_interrupt(bus).is_some()
            {
                self.request_stop();
            }
        }
        self.set_x(d.rd, old);
        Ok(next)
    }

    /// Whether the counter `index` (0 cycle, 1 time, 2 instret, 3.. hpm) may be read at
    /// the current privilege.
    fn counter_allowed(&self, index: u16) -> bool {
        let bit = 1u64 << index;
        match self.prv {
            Privilege::Machine => true,
            Privilege::Supervisor => self.csr.mcounteren & bit != 0,
            Privilege::User => self.csr.mcounteren & bit != 0 && self.csr.scounteren & bit != 0,
        }
    }

    fn fs_enabled(&self) -> bool {
        self.csr.mstatus & MSTATUS_FS != 0
    }

    /// `mstatus` as read: SD summarises FS.
    fn mstatus_value(&self) -> u64 {
        let st = self.csr.mstatus;
        if st & MSTATUS_FS == MSTATUS_FS {
            st | MSTATUS_SD
        } else {
            st
        }
    }

    /// The value of CSR `csr`, or `None` if it does not exist here (or is not accessible
    /// for reasons beyond the number's privilege bits).
    pub fn read_csr(&self, bus: &Bus, csr: u16) -> Option<u64> {
        let c = &self.csr;
        Some(match csr {
            num::FFLAGS if self.fs_enabled() => c.fflags as u64,
            num::FRM if self.fs_enabled() => c.frm as u64,
            num::FCSR if self.fs_enabled() => ((c.frm as u64) << 5) | c.fflags as u64,
            num::CYCLE..=num::HPMCOUNTER31 => {
                if !self.counter_allowed(csr - num::CYCLE) {
                    return None;
                }
                match csr {
                    num::CYCLE => self.mcycle,
                    num::TIME => Clint::mtime(self.mcycle),
                    num::INSTRET => self.minstret(),
                    _ => 0,
                }
            }
            num::SSTATUS => self.mstatus_value() & SSTATUS_VISIBLE,
            num::SIE => c.mie & c.mideleg,
            num::STVEC => c.stvec,
            num::SCOUNTEREN => c.scounteren,
            num::SSCRATCH => c.sscratch,
            num::SEPC => c.sepc,
            num::SCAUSE => c.scause,
            num::STVAL => c.stval,
            num::SIP => self.mip(bus) & c.mideleg,
            num::SATP => {
                if self.prv == Privilege::Supervisor && c.mstatus & MSTATUS_TVM != 0 {
                    return None;
                }
                c.satp
            }
            num::MVENDORID | num::MARCHID | num::MIMPID | num::MHARTID | num::MCONFIGPTR => 0,
            num::MSTATUS => self.mstatus_value(),
            num::MISA => MISA,
            num::MEDELEG => c.medeleg,
            num::MIDELEG => c.mideleg,
            num::MIE => c.mie,
            num::MTVEC => c.mtvec,
            num::MCOUNTEREN => c.mcounteren,
            // Counters are never inhibited: time is the instruction count.
            num::MCOUNTINHIBIT => 0,
            num::MHPMEVENT3..=num::MHPMEVENT31 => 0,
            num::MSCRATCH => c.mscratch,
            num::MEPC => c.mepc,
            num::MCAUSE => c.mcause,
            num::MTVAL => c.mtval,
            num::MIP => self.mip(bus),
            num::PMPCFG0..=num::PMPCFG15 => {
                let i = (csr - num::PMPCFG0) as usize;
                if i % 2 == 1 {
                    return None; // RV64 has only the even pmpcfg registers
                }
                c.pmpcfg.get(i / 2).copied().unwrap_or(0)
            }
            num::PMPADDR0..=num::PMPADDR63 => {
                let i = (csr - num::PMPADDR0) as usize;
                c.pmpaddr.get(i).copied().unwrap_or(0)
            }
            num::MCYCLE => self.mcycle,
            num::MINSTRET => self.minstret(),
            num::MHPMCOUNTER3..=num::MHPMCOUNTER31 => 0,
            num::TSELECT | num::TDATA1 | num::TDATA2 | num::TDATA3 => 0,
            _ => return None,
        })
    }

    /// Writes CSR `csr` (WARL fields legalised); `None` if it cannot be written.
    pub fn write_csr(&mut self, csr: u16, value: u64) -> Option<()> {
        let c = &mut self.csr;
        match csr {
            num::FFLAGS | num::FRM | num::FCSR => {
                if c.mstatus & MSTATUS_FS == 0 {
                    return None;
                }
                match csr {
                    num::FFLAGS => c.fflags = (value & 0x1f) as u8,
                    num::FRM => c.frm = (value & 7) as u8,
                    _ => {
                        c.fflags = (value & 0x1f) as u8;
                        c.frm = ((value >> 5) & 7) as u8;
                    }
                }
                c.mstatus |= MSTATUS_FS;
            }
            num::SSTATUS => {
                c.mstatus = (c.mstatus & !SSTATUS_WRITABLE) | (value & SSTATUS_WRITABLE);
                self.on_status_write();
            }
            num::SIE => {
                let mask = c.mideleg & MIE_WRITABLE;
                c.mie = (c.mie & !mask) | (value & mask);
                self.request_stop();
            }
            num::STVEC => c.stvec = legal_tvec(value),
            num::SCOUNTEREN => c.scounteren = value & COUNTEREN_WRITABLE,
            num::SSCRATCH => c.sscratch = value,
            num::SEPC => c.sepc = legal_epc(value),
            num::SCAUSE => c.scause = value,
            num::STVAL => c.stval = value,
            num::SIP => {
                let mask = c.mideleg & MIP_SSIP;
                c.mip = (c.mip & !mask) | (value & mask);
                self.request_stop();
            }
            num::SATP => {
                if self.prv == Privilege::Supervisor && c.mstatus & MSTATUS_TVM != 0 {
                    return None;
                }
                if let Some(satp) = legal_satp(value) {
                    c.satp = satp;
                    self.flush_tlb();
                    self.on_mode_change();
                }
            }
            num::MSTATUS => {
                c.mstatus = legal_mstatus(c.mstatus, value);
                self.on_status_write();
            }
            num::MISA => {} // WARL: the extensions are fixed
            num::MEDELEG => c.medeleg = value & MEDELEG_WRITABLE,
            num::MIDELEG => {
                c.mideleg = value & MIDELEG_WRITABLE;
                self.request_stop();
            }
            num::MIE => {
                c.mie = value & MIE_WRITABLE;
                self.request_stop();
            }
            num::MTVEC => c.mtvec = legal_tvec(value),
            num::MCOUNTEREN => c.mcounteren = value & COUNTEREN_WRITABLE,
            num::MCOUNTINHIBIT | num::MHPMEVENT3..=num::MHPMEVENT31 => {}
            num::MSCRATCH => c.mscratch = value,
            num::MEPC => c.mepc = legal_epc(value),
            num::MCAUSE => c.mcause = value,
            num::MTVAL => c.mtval = value,
            num::MIP => {
                c.mip = (c.mip & !MIP_WRITABLE) | (value & MIP_WRITABLE);
                self.request_stop();
            }
            num::PMPCFG0..=num::PMPCFG15 => {
                let i = (csr - num::PMPCFG0) as usize;
                if i % 2 == 1 {
                    return None;
                }
                if let Some(slot) = c.pmpcfg.get_mut(i / 2) {
                    // Each byte: the reserved bits 6:5 read as zero.
                    *slot = value & PMPCFG_WRITABLE;
                }
            }
            num::PMPADDR0..=num::PMPADDR63 => {
                let i = (csr - num::PMPADDR0) as usize;
                if let Some(slot) = c.pmpaddr.get_mut(i) {
                    *slot = value & PMPADDR_WRITABLE;
                }
            }
            // mcycle is the machine's clock (mtime = mcycle / 8192): writes are ignored so
            // that time stays the instruction count.
            num::MCYCLE | num::MHPMCOUNTER3..=num::MHPMCOUNTER31 => {}
            // minstret is writable (privileged spec, "Hardware Performance Monitor"), and
            // the value written is what the next instruction reads: this instruction's
            // own retirement, counted by the loop after it, is suppressed.
            num::MINSTRET => {
                self.non_retired = self.mcycle.wrapping_add(1).wrapping_sub(value);
            }
            // No triggers (Sdtrig): tselect reads 0 whatever is written, and tdata1 reads
            // type 0 ("no trigger at this tselect"), the way the debug spec's enumeration
            // recognises that none exist; writes are ignored rather than trapping.
            num::TSELECT | num::TDATA1 | num::TDATA2 | num::TDATA3 => {}
            _ => return None,
        }
        Some(())
    }
}
