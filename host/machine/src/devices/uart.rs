//! UART 16550A (`ns16550a`, `reg-shift = 0`, `reg-io-width = 1`): the Linux console.
//!
//! Output only: every byte written to THR goes to the console at once (transmission is
//! instantaneous, so LSR always shows THRE and TEMT), and the receiver never gets data
//! (DR stays clear) except in loopback mode, where a THR byte comes back in RBR as the
//! 16550 does (Linux's autoconfig probes loopback through MCR/MSR).
//!
//! The THRE interrupt follows what Linux's 8250 serial core expects (and QEMU's model):
//! an internal "THR empty" interrupt flag is set whenever THR becomes empty (right after a
//! THR write, since sending takes no time) and when IER's THRI bit goes from 0 to 1; it is
//! cleared by a THR write (before the byte goes out) and by a read of IIR that reports it.
//! The line to the PLIC is `interrupt_pending()`: an enabled cause exists.
//!
//! | offset | read | write |
//! |---|---|---|
//! | 0 | RBR (DLL when LCR.DLAB) | THR (DLL when LCR.DLAB) |
//! | 1 | IER (DLM when LCR.DLAB) | IER (DLM when LCR.DLAB) |
//! | 2 | IIR | FCR |
//! | 3 | LCR | LCR |
//! | 4 | MCR | MCR |
//! | 5 | LSR | (ignored) |
//! | 6 | MSR | (ignored) |
//! | 7 | SCR | SCR |
//!
//! Registers are one byte: wider accesses use the low byte of the value and return one
//! byte; offsets past 7 read 0 and ignore writes.

use super::{Device, MmioContext};
use crate::board::UART_CLOCK_HZ;
use crate::fdt::{self, FdtWriter};
use crate::state::{put_u8, Reader, StateError};

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
// IER bits 2 (receiver line status) and 3 (modem status) are stored but never raise an
// interrupt: there are no receive errors and the modem lines never change.
const IER_MASK: u8 = 0x0f;

const IIR_NO_INT: u8 = 0x01;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_FIFO_ENABLED: u8 = 0xc0;

const FCR_ENABLE_FIFO: u8 = 0x01;
const FCR_CLEAR_RCVR: u8 = 0x02;

const LCR_DLAB: u8 = 0x80;

const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1f;

const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;

/// The 16550A's registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    /// Divisor latch, low and high byte.
    dll: u8,
    dlm: u8,
    /// FIFOs enabled (FCR bit 0), reported in IIR bits 7:6.
    fifo_enabled: bool,
    /// The "THR empty" interrupt flag (see the module docs).
    thr_interrupt: bool,
    /// A byte received through loopback, when `rx_ready`.
    rbr: u8,
    /// LSR.DR: a received byte waits in RBR (only ever set in loopback mode).
    rx_ready: bool,
}

impl Default for Uart {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart {
    /// Reset state: interrupts disabled, 8N1 with a zero divisor, FIFOs off, nothing pending.
    pub fn new() -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 0,
            dlm: 0,
            fifo_enabled: false,
            thr_interrupt: false,
            rbr: 0,
            rx_ready: false,
        }
    }

    /// The cause IIR reports now (highest priority first), or `IIR_NO_INT`.
    fn interrupt_cause(&self) -> u8 {
        if self.ier & IER_RDI != 0 && self.rx_ready {
            IIR_RDI
        } else if self.ier & IER_THRI != 0 && self.thr_interrupt {
            IIR_THRI
        } else {
            IIR_NO_INT
        }
    }

    /// The interrupt line to the PLIC (level): some enabled cause is pending.
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_cause() != IIR_NO_INT
    }

    fn lsr(&self) -> u8 {
        LSR_THRE | LSR_TEMT | if self.rx_ready { LSR_DR } else { 0 }
    }

    /// MSR: in loopback, the modem inputs follow MCR's outputs; otherwise a console
    /// that is always connected and ready (DCD, DSR, CTS). No delta bits ever change.
    fn msr(&self) -> u8 {
        if self.mcr & MCR_LOOP != 0 {
            let mut msr = 0;
            if self.mcr & MCR_RTS != 0 {
                msr |= MSR_CTS;
            }
            if self.mcr & MCR_DTR != 0 {
                msr |= MSR_DSR;
            }
            if self.mcr & MCR_OUT1 != 0 {
                msr |= MSR_RI;
            }
            if self.mcr & MCR_OUT2 != 0 {
                msr |= MSR_DCD;
            }
            msr
        } else {
            MSR_DCD | MSR_DSR | MSR_CTS
        }
    }

    /// A load of `size` bytes at `offset` (one register byte; reads of RBR and IIR have
    /// their side effects).
    pub fn read(&mut self, offset: u64, _size: u32) -> u64 {
        let dlab = self.lcr & LCR_DLAB != 0;
        let value = match offset {
            0 if dlab => self.dll,
            0 => {
                self.rx_ready = false;
                self.rbr
            }
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => {
                let cause = self.interrupt_cause();
                if cause == IIR_THRI {
                    self.thr_interrupt = false;
                }
                cause
                    | if self.fifo_enabled {
                        IIR_FIFO_ENABLED
                    } else {
                        0
                    }
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => self.lsr(),
            6 => self.msr(),
            7 => self.scr,
            _ => 0,
        };
        value as u64
    }

    /// A store of `size` bytes at `offset`; bytes sent through THR are appended to `console`.
    pub fn write(&mut self, offset: u64, _size: u32, value: u64, console: &mut Vec<u8>) {
        let byte = value as u8;
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll = byte,
            0 => {
                // THR: the write empties the interrupt flag, the byte leaves at once, and
                // the now empty THR raises it again.
                self.thr_interrupt = false;
                if self.mcr & MCR_LOOP != 0 {
                    self.rbr = byte;
                    self.rx_ready = true;
                } else {
                    console.push(byte);
                }
                self.thr_interrupt = true;
            }
            1 if dlab => self.dlm = byte,
            1 => {
                let was_enabled = self.ier & IER_THRI != 0;
                self.ier = byte & IER_MASK;
                if self.ier & IER_THRI != 0 && !was_enabled {
                    self.thr_interrupt = true;
                }
            }
            2 => {
                self.fifo_enabled = byte & FCR_ENABLE_FIFO != 0;
                if byte & FCR_CLEAR_RCVR != 0 {
                    self.rx_ready = false;
                }
            }
            3 => self.lcr = byte,
            4 => self.mcr = byte & MCR_MASK,
            7 => self.scr = byte,
            _ => {}
        }
    }

    /// Appends the canonical encoding: IER, LCR, MCR, SCR, DLL, DLM, the FIFO-enabled flag,
    /// the THR-empty interrupt flag, RBR and the received-data flag, one byte each.
    pub fn save_state(&self, out: &mut Vec<u8>) {
        for b in [self.ier, self.lcr, self.mcr, self.scr, self.dll, self.dlm] {
            put_u8(out, b);
        }
        put_u8(out, self.fifo_enabled as u8);
        put_u8(out, self.thr_interrupt as u8);
        put_u8(out, self.rbr);
        put_u8(out, self.rx_ready as u8);
    }

    /// Restores what [`Uart::save_state`] wrote, consuming it from the front of `input`.
    pub fn load_state(input: &mut &[u8]) -> Result<Self, StateError> {
        let mut r = Reader::new(input);
        let uart = Self::load_state_from(&mut r)?;
        *input = r.remaining();
        Ok(uart)
    }

    /// Restores what [`Uart::save_state`] wrote from a [`Reader`], checking every value.
    pub fn load_state_from(r: &mut Reader<'_>) -> Result<Self, StateError> {
        let ier = r.u8()?;
        if ier & !IER_MASK != 0 {
            return Err(StateError::Invalid("uart ier"));
        }
        let lcr = r.u8()?;
        let mcr = r.u8()?;
        if mcr & !MCR_MASK != 0 {
            return Err(StateError::Invalid("uart mcr"));
        }
        Ok(Self {
            ier,
            lcr,
            mcr,
            scr: r.u8()?,
            dll: r.u8()?,
            dlm: r.u8()?,
            fifo_enabled: r.bool("uart fifo enabled")?,
            thr_interrupt: r.bool("uart thr interrupt")?,
            rbr: r.u8()?,
            rx_ready: r.bool("uart rx ready")?,
        })
    }
}

impl Device for Uart {
    fn name(&self) -> &'static str {
        "uart"
    }

    fn read(&mut self, offset: u64, size: u32, _cx: &mut MmioContext<'_>) -> Option<u64> {
        Some(Uart::read(self, offset, size))
    }

    fn write(
        &mut self,
        offset: u64,
        size: u32,
        value: u64,
        cx: &mut MmioContext<'_>,
    ) -> Option<()> {
        Uart::write(self, offset, size, value, cx.console);
        Some(())
    }

    fn save_state(&self, out: &mut Vec<u8>) {
        Uart::save_state(self, out)
    }

    fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError> {
        *self = Uart::load_state_from(r)?;
        Ok(())
    }

    fn device_tree_node(&self, w: &mut FdtWriter, base: u64, size: u64, irq: Option<u32>) {
        w.node(&format!("serial@{base:x}"), |w| {
            w.property_string("compatible", "ns16550a");
            w.property_cells("reg", &fdt::reg_cells(base, size));
            w.property_u32("clock-frequency", UART_CLOCK_HZ);
            w.property_u32("reg-shift", 0);
            w.property_u32("reg-io-width", 1);
            if let Some(irq) = irq {
                w.property_u32("interrupts", irq);
                w.property_u32("interrupt-parent", fdt::PHANDLE_PLIC);
            }
        });
    }

    fn interrupt_line(&self) -> bool {
        self.interrupt_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const FCR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const MSR: u64 = 6;
    const SCR: u64 = 7;

    #[test]
    fn thr_bytes_go_to_the_console_and_lsr_shows_an_empty_transmitter() {
        let mut u = Uart::new();
        let mut console = Vec::new();
        for b in b"hi\n" {
            u.write(THR, 1, *b as u64, &mut console);
        }
        assert_eq!(console, b"hi\n");
        assert_eq!(u.read(LSR, 1), (LSR_THRE | LSR_TEMT) as u64);
        assert_eq!(u.read(0, 1), 0, "no input");
        assert!(!u.interrupt_pending(), "THRI is not enabled");
    }

    #[test]
    fn divisor_latch_shadows_thr_and_ier() {
        let mut u = Uart::new();
        let mut console = Vec::new();
        u.write(LCR, 1, 0x83, &mut console);
        u.write(0, 1, 0x02, &mut console);
        u.write(1, 1, 0x01, &mut console);
        assert!(console.is_empty(), "a DLL write is not output");
        assert_eq!((u.read(0, 1), u.read(1, 1)), (2, 1));
        u.write(LCR, 1, 0x03, &mut console);
        assert_eq!(u.read(IER, 1), 0, "IER untouched by DLM writes");
        assert_eq!(u.read(LCR, 1), 3);
        u.write(SCR, 1, 0x5a, &mut console);
        assert_eq!(u.read(SCR, 1), 0x5a);
    }

    #[test]
    fn thre_interrupt_behaves_as_the_8250_driver_expects() {
        let mut u = Uart::new();
        let mut console = Vec::new();
        assert_eq!(u.read(IIR, 1), IIR_NO_INT as u64);
        // Enabling THRI with an empty THR raises it.
        u.write(IER, 1, IER_THRI as u64, &mut console);
        assert!(u.interrupt_pending());
        // Reading IIR that reports THRE clears it.
        assert_eq!(u.read(IIR, 1), IIR_THRI as u64);
        assert!(!u.interrupt_pending());
        assert_eq!(u.read(IIR, 1), IIR_NO_INT as u64);
        // Sending a byte empties THR again at once: the interrupt comes back.
        u.write(THR, 1, b'x' as u64, &mut console);
        assert!(u.interrupt_pending());
        // Disabling THRI drops the line; re-enabling raises it again (Linux's THRE test).
        u.write(IER, 1, 0, &mut console);
        assert!(!u.interrupt_pending());
        u.read(IIR, 1);
        u.write(IER, 1, IER_THRI as u64, &mut console);
        assert_eq!(u.read(IIR, 1), IIR_THRI as u64);
        // Writing IER with THRI already set does not re-raise it.
        u.write(IER, 1, (IER_THRI | IER_RDI) as u64, &mut console);
        assert!(!u.interrupt_pending());
        assert_eq!(console, b"x");
    }

    #[test]
    fn fifo_enable_shows_in_iir() {
        let mut u = Uart::new();
        let mut console = Vec::new();
        u.write(FCR, 1, 0x07, &mut console);
        assert_eq!(u.read(IIR, 1), 0xc1);
        u.write(FCR, 1, 0x00, &mut console);
        assert_eq!(u.read(IIR, 1), 0x01);
    }

    #[test]
    fn loopback_returns_bytes_and_modem_lines() {
        let mut u = Uart::new();
        let mut console = Vec::new();
        assert_eq!(u.read(MSR, 1), 0xb0);
        // Linux's autoconfig: MCR = LOOP | OUT2 | RTS must read back MSR = DCD | CTS.
        u.write(MCR, 1, 0x1a, &mut console);
        assert_eq!(u.read(MSR, 1) & 0xf0, 0x90);
        u.write(IER, 1, IER_RDI as u64, &mut console);
        u.write(THR, 1, 0x42, &mut console);
        assert!(console.is_empty(), "loopback bytes do not leave");
        assert_eq!(u.read(LSR, 1) & LSR_DR as u64, 1);
        assert!(u.interrupt_pending());
        assert_eq!(u.read(IIR, 1), IIR_RDI as u64);
        assert_eq!(u.read(0, 1), 0x42);
        assert_eq!(u.read(LSR, 1) & LSR_DR as u64, 0);
        assert!(!u.interrupt_pending());
    }

    #[test]
    fn state_round_trips_and_rejects_invalid_values() {
        let mut u = Uart::new();
        let mut console = Vec::new();
        u.write(LCR, 1, 0x83, &mut console);
        u.write(0, 1, 0x01, &mut console);
        u.write(LCR, 1, 0x03, &mut console);
        u.write(FCR, 1, 0x01, &mut console);
        u.write(IER, 1, IER_THRI as u64, &mut console);
        let mut out = Vec::new();
        u.save_state(&mut out);
        out.push(0x77);
        let mut input = &out[..];
        let v = Uart::load_state(&mut input).unwrap();
        assert_eq!(v, u);
        assert_eq!(input, &[0x77]);
        assert!(v.interrupt_pending());
        let mut bad = out.clone();
        bad[0] = 0xff;
        assert_eq!(
            Uart::load_state(&mut &bad[..]),
            Err(StateError::Invalid("uart ier"))
        );
        let mut bad = out.clone();
        bad[7] = 2;
        assert_eq!(
            Uart::load_state(&mut &bad[..]),
            Err(StateError::Invalid("uart thr interrupt"))
        );
        assert_eq!(Uart::load_state(&mut &out[..4]), Err(StateError::Truncated));
    }
}
