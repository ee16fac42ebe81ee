//! CLINT (`riscv,clint0`): machine software and timer interrupts of hart 0.
//!
//! `mtime` is not state of its own: it is `mcycle / 8192` (docs/design.md), so the CLINT only
//! keeps `msip` and `mtimecmp`; writes to `mtime` are ignored because time is the
//! instruction count.

use super::{Device, MmioContext};
use crate::board::{CLINT_MSIP, CLINT_MTIME, CLINT_MTIMECMP, MCYCLES_PER_MTIME};
use crate::fdt::{self, FdtWriter};
use crate::state::{put_u64, put_u8, Reader, StateError};

/// The CLINT's registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clint {
    /// `msip` of hart 0 (only bit 0 exists).
    pub msip: bool,
    /// `mtimecmp` of hart 0.
    pub mtimecmp: u64,
}

impl Default for Clint {
    fn default() -> Self {
        Self::new()
    }
}

impl Clint {
    /// Reset state: no software interrupt, `mtimecmp` at its maximum (no timer interrupt).
    pub fn new() -> Self {
        Self {
            msip: false,
            mtimecmp: u64::MAX,
        }
    }

    /// `mtime` at cycle `mcycle`.
    pub fn mtime(mcycle: u64) -> u64 {
        mcycle / MCYCLES_PER_MTIME
    }

    /// Whether the timer interrupt (MTIP) is pending at cycle `mcycle`.
    pub fn mtip(&self, mcycle: u64) -> bool {
        Self::mtime(mcycle) >= self.mtimecmp
    }

    /// The first cycle at which MTIP is pending (`u64::MAX` if never).
    pub fn timer_deadline(&self) -> u64 {
        self.mtimecmp.saturating_mul(MCYCLES_PER_MTIME)
    }

    /// A load of `size` bytes at `offset`; `None` where no register lives (access fault).
    pub fn read(&self, offset: u64, size: u32, mcycle: u64) -> Option<u64> {
        let (reg, shift) = Self::locate(offset, size)?;
        let value = match reg {
            CLINT_MSIP => self.msip as u64,
            CLINT_MTIMECMP => self.mtimecmp,
            CLINT_MTIME => Self::mtime(mcycle),
            _ => return None,
        };
        Some(truncate(value >> shift, size))
    }

    /// A store of `size` bytes at `offset`; `None` where no register lives.
    pub fn write(&mut self, offset: u64, size: u32, value: u64) -> Option<()> {
        let (reg, shift) = Self::locate(offset, size)?;
        match reg {
            CLINT_MSIP => {
                if shift == 0 {
                    self.msip = value & 1 != 0;
                }
            }
            CLINT_MTIMECMP => {
                let mask = if size == 8 {
                    !0
                } else {
                    0xffff_ffffu64 << shift
                };
                self.mtimecmp = (self.mtimecmp & !mask) | ((value << shift) & mask);
            }
            CLINT_MTIME => {}
            _ => return None,
        }
        Some(())
    }

    /// Splits an access into (register offset, bit shift within it); only naturally
    /// aligned 4- and 8-byte accesses reach registers.
    fn locate(offset: u64, size: u32) -> Option<(u64, u32)> {
        match size {
            8 if offset % 8 == 0 => Some((offset, 0)),
            4 if offset % 4 == 0 => Some((offset & !7, ((offset & 4) * 8) as u32)),
            _ => None,
        }
    }

    /// Appends the canonical encoding of the registers.
    pub fn save_state(&self, out: &mut Vec<u8>) {
        put_u8(out, self.msip as u8);
        put_u64(out, self.mtimecmp);
    }

    /// Restores what [`Clint::save_state`] wrote.
    pub fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError> {
        self.msip = r.bool("clint msip")?;
        self.mtimecmp = r.u64()?;
        Ok(())
    }
}

impl Device for Clint {
    fn name(&self) -> &'static str {
        "clint"
    }

    fn read(&mut self, offset: u64, size: u32, cx: &mut MmioContext<'_>) -> Option<u64> {
        Clint::read(self, offset, size, cx.mcycle)
    }

    fn write(
        &mut self,
        offset: u64,
        size: u32,
        value: u64,
        _cx: &mut MmioContext<'_>,
    ) -> Option<()> {
        Clint::write(self, offset, size, value)
    }

    fn save_state(&self, out: &mut Vec<u8>) {
        Clint::save_state(self, out)
    }

    fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError> {
        Clint::load_state(self, r)
    }

    fn device_tree_node(&self, w: &mut FdtWriter, base: u64, size: u64, _irq: Option<u32>) {
        w.node(&format!("clint@{base:x}"), |w| {
            w.property_string("compatible", "riscv,clint0");
            w.property_cells("reg", &fdt::reg_cells(base, size));
            w.property_cells(
                "interrupts-extended",
                &[
                    fdt::PHANDLE_CPU_INTC,
                    fdt::IRQ_M_SOFT,
                    fdt::PHANDLE_CPU_INTC,
                    fdt::IRQ_M_TIMER,
                ],
            );
        });
    }
}

fn truncate(value: u64, size: u32) -> u64 {
    if size >= 8 {
        value
    } else {
        value & ((1u64 << (size * 8)) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtime_is_mcycle_over_8192_and_timer_fires_at_mtimecmp() {
        let mut c = Clint::new();
        assert_eq!(c.read(CLINT_MTIME, 8, 3 * 8192 + 5), Some(3));
        c.write(CLINT_MTIMECMP, 4, 10).unwrap();
        c.write(CLINT_MTIMECMP + 4, 4, 0).unwrap();
        assert_eq!(c.mtimecmp, 10);
        assert!(!c.mtip(10 * 8192 - 1));
        assert!(c.mtip(10 * 8192));
        assert_eq!(c.timer_deadline(), 10 * 8192);
    }

    #[test]
    fn msip_and_unknown_offsets() {
        let mut c = Clint::new();
        c.write(CLINT_MSIP, 4, 3).unwrap();
        assert!(c.msip);
        assert_eq!(c.read(CLINT_MSIP, 4, 0), Some(1));
        assert_eq!(c.read(0x100, 4, 0), None);
        assert_eq!(c.read(CLINT_MTIME, 2, 0), None);
    }

    #[test]
    fn state_round_trips() {
        let mut c = Clint::new();
        c.msip = true;
        c.mtimecmp = 77;
        let mut out = Vec::new();
        c.save_state(&mut out);
        let mut d = Clint::new();
        d.load_state(&mut Reader::new(&out)).unwrap();
        assert_eq!(c, d);
    }
}
