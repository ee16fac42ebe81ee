//! HTIF (`ucb,htif0`): the host-target interface bare-metal programs and OpenSBI use to
//! halt the machine and print to the console.
//!
//! `tohost = (dev << 56) | (cmd << 48) | data`. dev 0 cmd 0 with `data & 1` halts with
//! exit code `data >> 1`; dev 1 cmd 1 prints the byte `data & 0xff`; dev 2 cmd 0 yields
//! to the host with `data` (the run loop returns [`crate::machine::Break::Yielded`] right
//! after the storing instruction; the guest then simply goes on when the machine is run
//! again, so a yield is a fixed, deterministic point the host can act at). Each command is
//! consumed the moment it is written (`tohost` reads back as 0 afterwards), so a guest
//! never polls. A command is triggered by an 8-byte store to `tohost`, or by a 4-byte
//! store to its upper half (32-bit code writes the low half first).

use super::{Device, MmioContext};
use crate::board::{HTIF_FROMHOST, HTIF_TOHOST};
use crate::fdt::{self, FdtWriter};
use crate::state::{put_u64, put_u8, Reader, StateError};

/// The HTIF's registers and the halt it may have been asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Htif {
    /// `tohost` (holds only a pending low half between two 4-byte stores).
    pub tohost: u64,
    /// `fromhost` (nothing the machine sends; a plain register).
    pub fromhost: u64,
    /// `Some(exit code)` once the guest asked to halt.
    pub halt: Option<u64>,
    /// `Some(data)` from a yield the run loop has not reported yet. Not state (never
    /// saved nor hashed): [`crate::machine::Machine::run`] takes it as it returns, so it
    /// is `None` whenever the machine is not running.
    pub yielded: Option<u64>,
}

/// HTIF device number of the yield command (`tohost = YIELD_DEVICE << 56 | data`).
pub const YIELD_DEVICE: u64 = 2;

impl Htif {
    /// Reset state.
    pub fn new() -> Self {
        Self::default()
    }

    /// A load of `size` bytes at `offset`; `None` where no register lives.
    pub fn read(&self, offset: u64, size: u32) -> Option<u64> {
        let (reg, shift) = locate(offset, size)?;
        let value = match reg {
            HTIF_TOHOST => self.tohost,
            HTIF_FROMHOST => self.fromhost,
            _ => 0,
        };
        Some(if size == 8 {
            value
        } else {
            (value >> shift) & 0xffff_ffff
        })
    }

    /// A store of `size` bytes at `offset`; console bytes are appended to `console`.
    pub fn write(
        &mut self,
        offset: u64,
        size: u32,
        value: u64,
        console: &mut Vec<u8>,
    ) -> Option<()> {
        let (reg, shift) = locate(offset, size)?;
        let (old, mask) = match reg {
            HTIF_TOHOST => (self.tohost, mask_for(size, shift)),
            HTIF_FROMHOST => (self.fromhost, mask_for(size, shift)),
            _ => return Some(()),
        };
        let new = (old & !mask) | ((value << shift) & mask);
        if reg == HTIF_FROMHOST {
            self.fromhost = new;
            return Some(());
        }
        self.tohost = new;
        if size == 8 || shift == 32 {
            self.run_command(console);
        }
        Some(())
    }

    fn run_command(&mut self, console: &mut Vec<u8>) {
        let cmd = std::mem::take(&mut self.tohost);
        let (dev, op, data) = (cmd >> 56, (cmd >> 48) & 0xff, cmd & 0xffff_ffff_ffff);
        match (dev, op) {
            (0, 0) if data & 1 != 0 && self.halt.is_none() => self.halt = Some(data >> 1),
            (1, 1) => console.push(data as u8),
            (YIELD_DEVICE, 0) if self.halt.is_none() => self.yielded = Some(data),
            _ => {}
        }
    }

    /// Appends the canonical encoding of the registers.
    pub fn save_state(&self, out: &mut Vec<u8>) {
        put_u64(out, self.tohost);
        put_u64(out, self.fromhost);
        put_u8(out, self.halt.is_some() as u8);
        put_u64(out, self.halt.unwrap_or(0));
    }

    /// Restores what [`Htif::save_state`] wrote.
    pub fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError> {
        self.tohost = r.u64()?;
        self.fromhost = r.u64()?;
        let halted = r.bool("htif halt flag")?;
        let code = r.u64()?;
        self.halt = halted.then_some(code);
        self.yielded = None;
        Ok(())
    }
}

fn locate(offset: u64, size: u32) -> Option<(u64, u32)> {
    match size {
        8 if offset % 8 == 0 => Some((offset, 0)),
        4 if offset % 4 == 0 => Some((offset & !7, ((offset & 4) * 8) as u32)),
        _ => None,
    }
}

fn mask_for(size: u32, shift: u32) -> u64 {
    if size == 8 {
        !0
    } else {
        0xffff_ffffu64 << shift
    }
}

impl Device for Htif {
    fn name(&self) -> &'static str {
        "htif"
    }

    fn read(&mut self, offset: u64, size: u32, _cx: &mut MmioContext<'_>) -> Option<u64> {
        Htif::read(self, offset, size)
    }

    fn write(
        &mut self,
        offset: u64,
        size: u32,
        value: u64,
        cx: &mut MmioContext<'_>,
    ) -> Option<()> {
        Htif::write(self, offset, size, value, cx.console)
    }

    fn save_state(&self, out: &mut Vec<u8>) {
        Htif::save_state(self, out)
    }

    fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError> {
        Htif::load_state(self, r)
    }

    fn device_tree_node(&self, w: &mut FdtWriter, base: u64, _size: u64, _irq: Option<u32>) {
        // OpenSBI takes the first `reg` entry as `fromhost`, the second as `tohost`.
        w.node(&format!("htif@{base:x}"), |w| {
            w.property_string("compatible", "ucb,htif0");
            let mut reg = fdt::reg_cells(base + HTIF_FROMHOST, 8).to_vec();
            reg.extend(fdt::reg_cells(base + HTIF_TOHOST, 8));
            w.property_cells("reg", &reg);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn putchar_and_halt_are_consumed_at_once() {
        let mut h = Htif::new();
        let mut console = Vec::new();
        h.write(0, 8, (1 << 56) | (1 << 48) | b'A' as u64, &mut console)
            .unwrap();
        assert_eq!(console, b"A");
        assert_eq!(h.read(0, 8), Some(0));
        assert_eq!(h.halt, None);
        h.write(0, 8, (42 << 1) | 1, &mut console).unwrap();
        assert_eq!(h.halt, Some(42));
    }

    #[test]
    fn two_word_stores_trigger_on_the_upper_half() {
        let mut h = Htif::new();
        let mut console = Vec::new();
        h.write(0, 4, b'c' as u64, &mut console).unwrap();
        assert!(console.is_empty() && h.halt.is_none());
        h.write(4, 4, 0x0101_0000, &mut console).unwrap();
        assert_eq!(console, b"c");
        assert_eq!(h.halt, None);
    }

    #[test]
    fn a_yield_is_consumed_and_is_not_state() {
        let mut h = Htif::new();
        let mut console = Vec::new();
        let (mut before, mut after) = (Vec::new(), Vec::new());
        h.save_state(&mut before);
        h.write(0, 8, (YIELD_DEVICE << 56) | 7, &mut console)
            .unwrap();
        assert_eq!(h.yielded, Some(7));
        assert_eq!(h.read(0, 8), Some(0));
        h.save_state(&mut after);
        assert_eq!(before, after);
        assert_eq!(h.halt, None);
    }

    #[test]
    fn state_round_trips() {
        let h = Htif {
            tohost: 5,
            fromhost: 6,
            halt: Some(3),
            yielded: None,
        };
        let mut out = Vec::new();
        h.save_state(&mut out);
        let mut g = Htif::new();
        g.load_state(&mut Reader::new(&out)).unwrap();
        assert_eq!(h, g);
    }
}
