//! PLIC (`sifive,plic-1.0.0`, `riscv,plic0`): routes the board's level-triggered device
//! interrupt lines to hart 0's external interrupts.
//!
//! Sources `1..=PLIC_NDEV` (source 0 does not exist), two contexts: context 0 is hart 0's
//! M mode (MEIP), context 1 its S mode (SEIP), in the order of the device tree's
//! `interrupts-extended = <&intc 11 &intc 9>`. Register map (32-bit registers):
//!
//! | offset | register |
//! |---|---|
//! | `0x000000 + 4*s` | priority of source `s` (0..=7; 0 never interrupts) |
//! | `0x001000 + 4*w` | pending bits of sources `32w..32w+31` (read-only) |
//! | `0x002000 + 0x80*c + 4*w` | enable bits of context `c` |
//! | `0x200000 + 0x1000*c` | priority threshold of context `c` (0..=7) |
//! | `0x200004 + 0x1000*c` | claim (read) / complete (write) of context `c` |
//!
//! Each source has a gateway as the PLIC specification describes for level-triggered
//! lines: while the line is high and the source is neither pending nor in service, it
//! becomes pending; a claim clears pending and puts the source in service; a complete
//! takes it out of service, and a line still high makes it pending again at once.
//! Claims take the highest-priority pending enabled source of nonzero priority (ties to the
//! lowest number), regardless of the threshold, as QEMU does; the threshold only gates the
//! interrupt line to the hart.
//!
//! Accesses of 4 bytes are the registers; an 8-byte access is two registers, low first.
//! Narrower accesses read the bytes of a register without side effects and write nothing.
//! Holes read as 0 and ignore writes.

use super::{Device, MmioContext};
use crate::board::PLIC_NDEV;
use crate::fdt::{self, FdtWriter};
use crate::state::{put_u64, Reader, StateError};

/// Contexts: hart 0 M mode, hart 0 S mode.
const CONTEXTS: usize = 2;
/// Highest priority (priorities and thresholds are 3 bits wide).
const MAX_PRIORITY: u32 = 7;
/// 32-bit words of source bits (pending, enable); source 0 is bit 0 of word 0.
const WORDS: usize = (PLIC_NDEV as usize + 1).div_ceil(32);

const PRIORITY_BASE: u64 = 0x0;
const PENDING_BASE: u64 = 0x1000;
const ENABLE_BASE: u64 = 0x2000;
const ENABLE_STRIDE: u64 = 0x80;
const CONTEXT_BASE: u64 = 0x20_0000;
const CONTEXT_STRIDE: u64 = 0x1000;

/// The PLIC's registers and gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plic {
    /// Priority of each source; index 0 unused and always 0.
    priority: [u32; PLIC_NDEV as usize + 1],
    /// Pending bits; bit 0 always clear.
    pending: [u32; WORDS],
    /// Sources claimed and not yet completed.
    in_service: [u32; WORDS],
    /// Current level of each device line.
    level: [u32; WORDS],
    /// Enable bits per context.
    enable: [[u32; WORDS]; CONTEXTS],
    /// Priority threshold per context.
    threshold: [u32; CONTEXTS],
}

impl Default for Plic {
    fn default() -> Self {
        Self::new()
    }
}

/// Bit mask of the sources that exist in word `w` (source 0 and sources past NDEV excluded).
fn valid_mask(w: usize) -> u32 {
    let mut mask = 0u32;
    for bit in 0..32 {
        let source = w * 32 + bit;
        if source >= 1 && source <= PLIC_NDEV as usize {
            mask |= 1 << bit;
        }
    }
    mask
}

impl Plic {
    /// Reset state: all priorities, enables and thresholds zero, nothing pending.
    pub fn new() -> Self {
        Self {
            priority: [0; PLIC_NDEV as usize + 1],
            pending: [0; WORDS],
            in_service: [0; WORDS],
            level: [0; WORDS],
            enable: [[0; WORDS]; CONTEXTS],
            threshold: [0; CONTEXTS],
        }
    }

    /// Drives device line `irq` (1..=PLIC_NDEV; others are ignored) to `level`.
    pub fn set_source_level(&mut self, irq: u32, level: bool) {
        if irq == 0 || irq > PLIC_NDEV {
            return;
        }
        let (w, bit) = (irq as usize / 32, 1u32 << (irq % 32));
        if level {
            self.level[w] |= bit;
        } else {
            self.level[w] &= !bit;
        }
        self.run_gateway(irq);
    }

    /// A high line not pending and not in service becomes pending. A line that drops
    /// leaves a pending interrupt pending, as the gateway has already forwarded it.
    fn run_gateway(&mut self, irq: u32) {
        let (w, bit) = (irq as usize / 32, 1u32 << (irq % 32));
        if self.level[w] & bit != 0 && self.in_service[w] & bit == 0 {
            self.pending[w] |= bit;
        }
    }

    /// Whether context `ctx` has a pending enabled source above its threshold.
    fn context_interrupt(&self, ctx: usize) -> bool {
        (0..WORDS).any(|w| {
            let mut bits = self.pending[w] & self.enable[ctx][w];
            while bits != 0 {
                let source = w * 32 + bits.trailing_zeros() as usize;
                if self.priority[source] > self.threshold[ctx] {
                    return true;
                }
                bits &= bits - 1;
            }
            false
        })
    }

    /// The machine external interrupt line (MEIP) of hart 0.
    pub fn meip(&self) -> bool {
        self.context_interrupt(0)
    }

    /// The supervisor external interrupt line (SEIP) of hart 0.
    pub fn seip(&self) -> bool {
        self.context_interrupt(1)
    }

    /// Claims the best pending enabled source of `ctx` (0 when there is none).
    fn claim(&mut self, ctx: usize) -> u32 {
        let mut best = 0usize;
        for w in 0..WORDS {
            let mut bits = self.pending[w] & self.enable[ctx][w];
            while bits != 0 {
                let source = w * 32 + bits.trailing_zeros() as usize;
                if self.priority[source] > self.priority[best] {
                    best = source;
                }
                bits &= bits - 1;
            }
        }
        if best != 0 {
            let (w, bit) = (best / 32, 1u32 << (best % 32));
            self.pending[w] &= !bit;
            self.in_service[w] |= bit;
        }
        best as u32
    }

    /// Completes `source` for `ctx`; ignored unless the source is enabled for `ctx`.
    fn complete(&mut self, ctx: usize, source: u32) {
        if source == 0 || source > PLIC_NDEV {
            return;
        }
        let (w, bit) = (source as usize / 32, 1u32 << (source % 32));
        if self.enable[ctx][w] & bit == 0 {
            return;
        }
        self.in_service[w] &= !bit;
        self.run_gateway(source);
    }

    /// Whether `offset` is a context's claim/complete register.
    fn is_claim(offset: u64) -> bool {
        offset >= CONTEXT_BASE && (offset - CONTEXT_BASE) % CONTEXT_STRIDE == 4
    }

    /// A 32-bit register read at `offset` (4-aligned); claims have their side effect.
    fn read_register(&mut self, offset: u64) -> u32 {
        if Self::is_claim(offset) {
            let ctx = ((offset - CONTEXT_BASE) / CONTEXT_STRIDE) as usize;
            return if ctx < CONTEXTS { self.claim(ctx) } else { 0 };
        }
        self.peek_register(offset)
    }

    /// The register at `offset` (4-aligned) without side effects; claim registers read 0.
    fn peek_register(&self, offset: u64) -> u32 {
        match offset {
            o if o < PENDING_BASE => {
                let s = ((o - PRIORITY_BASE) / 4) as usize;
                self.priority.get(s).copied().unwrap_or(0)
            }
            o if o < ENABLE_BASE => {
                let w = ((o - PENDING_BASE) / 4) as usize;
                self.pending.get(w).copied().unwrap_or(0)
            }
            o if o < CONTEXT_BASE => {
                let ctx = ((o - ENABLE_BASE) / ENABLE_STRIDE) as usize;
                let w = ((o - ENABLE_BASE) % ENABLE_STRIDE / 4) as usize;
                self.enable
                    .get(ctx)
                    .and_then(|e| e.get(w))
                    .copied()
                    .unwrap_or(0)
            }
            o => {
                let ctx = ((o - CONTEXT_BASE) / CONTEXT_STRIDE) as usize;
                match (o - CONTEXT_BASE) % CONTEXT_STRIDE {
                    0 if ctx < CONTEXTS => self.threshold[ctx],
                    _ => 0,
                }
            }
        }
    }

    /// A 32-bit register write at `offset` (4-aligned).
    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            o if o < PENDING_BASE => {
                let s = ((o - PRIORITY_BASE) / 4) as usize;
                if s >= 1 && s <= PLIC_NDEV as usize {
                    self.priority[s] = value & MAX_PRIORITY;
                }
            }
            o if o < ENABLE_BASE => {} // pending bits are read-only
            o if o < CONTEXT_BASE => {
                let ctx = ((o - ENABLE_BASE) / ENABLE_STRIDE) as usize;
                let w = ((o - ENABLE_BASE) % ENABLE_STRIDE / 4) as usize;
                if ctx < CONTEXTS && w < WORDS {
                    self.enable[ctx][w] = value & valid_mask(w);
                }
            }
            o => {
                let ctx = ((o - CONTEXT_BASE) / CONTEXT_STRIDE) as usize;
                if ctx >= CONTEXTS {
                    return;
                }
                match (o - CONTEXT_BASE) % CONTEXT_STRIDE {
                    0 => self.threshold[ctx] = value & MAX_PRIORITY,
                    4 => self.complete(ctx, value),
                    _ => {}
                }
            }
        }
    }

    /// A load of `size` bytes at `offset` within the PLIC window.
    pub fn read(&mut self, offset: u64, size: u32) -> u64 {
        match size {
            4 if offset % 4 == 0 => self.read_register(offset) as u64,
            8 if offset % 8 == 0 => {
                let low = self.read_register(offset) as u64;
                let high = self.read_register(offset + 4) as u64;
                low | high << 32
            }
            1 | 2 if offset % size as u64 == 0 => {
                let word = self.peek_register(offset & !3) as u64;
                let shift = (offset & 3) * 8;
                (word >> shift) & ((1u64 << (size * 8)) - 1)
            }
            _ => 0,
        }
    }

    /// A store of `size` bytes at `offset` within the PLIC window.
    pub fn write(&mut self, offset: u64, size: u32, value: u64) {
        match size {
            4 if offset % 4 == 0 => self.write_register(offset, value as u32),
            8 if offset % 8 == 0 => {
                self.write_register(offset, value as u32);
                self.write_register(offset + 4, (value >> 32) as u32);
            }
            _ => {}
        }
    }

    /// Appends the canonical encoding: priorities of sources 1..=NDEV, then pending,
    /// in-service and line-level words, then per context its enable words and threshold;
    /// every field a little-endian u64.
    pub fn save_state(&self, out: &mut Vec<u8>) {
        for &p in &self.priority[1..] {
            put_u64(out, p as u64);
        }
        for words in [&self.pending, &self.in_service, &self.level] {
            for &w in words {
                put_u64(out, w as u64);
            }
        }
        for ctx in 0..CONTEXTS {
            for &w in &self.enable[ctx] {
                put_u64(out, w as u64);
            }
            put_u64(out, self.threshold[ctx] as u64);
        }
    }

    /// Restores what [`Plic::save_state`] wrote, consuming it from the front of `input`.
    pub fn load_state(input: &mut &[u8]) -> Result<Self, StateError> {
        let mut r = Reader::new(input);
        let plic = Self::load_state_from(&mut r)?;
        *input = r.remaining();
        Ok(plic)
    }

    /// Restores what [`Plic::save_state`] wrote from a [`Reader`], checking every value.
    pub fn load_state_from(r: &mut Reader<'_>) -> Result<Self, StateError> {
        let mut plic = Self::new();
        let small = |v: u64, what: &'static str| -> Result<u32, StateError> {
            if v <= MAX_PRIORITY as u64 {
                Ok(v as u32)
            } else {
                Err(StateError::Invalid(what))
            }
        };
        let bits = |v: u64, w: usize, what: &'static str| -> Result<u32, StateError> {
            if v & !(valid_mask(w) as u64) == 0 {
                Ok(v as u32)
            } else {
                Err(StateError::Invalid(what))
            }
        };
        for s in 1..=PLIC_NDEV as usize {
            plic.priority[s] = small(r.u64()?, "plic priority")?;
        }
        for w in 0..WORDS {
            plic.pending[w] = bits(r.u64()?, w, "plic pending")?;
        }
        for w in 0..WORDS {
            plic.in_service[w] = bits(r.u64()?, w, "plic in-service")?;
        }
        for w in 0..WORDS {
            plic.level[w] = bits(r.u64()?, w, "plic line level")?;
        }
        for ctx in 0..CONTEXTS {
            for w in 0..WORDS {
                plic.enable[ctx][w] = bits(r.u64()?, w, "plic enable")?;
            }
            plic.threshold[ctx] = small(r.u64()?, "plic threshold")?;
        }
        Ok(plic)
    }
}

impl Device for Plic {
    fn name(&self) -> &'static str {
        "plic"
    }

    fn read(&mut self, offset: u64, size: u32, _cx: &mut MmioContext<'_>) -> Option<u64> {
        Some(Plic::read(self, offset, size))
    }

    fn write(
        &mut self,
        offset: u64,
        size: u32,
        value: u64,
        _cx: &mut MmioContext<'_>,
    ) -> Option<()> {
        Plic::write(self, offset, size, value);
        Some(())
    }

    fn save_state(&self, out: &mut Vec<u8>) {
        Plic::save_state(self, out)
    }

    fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError> {
        *self = Plic::load_state_from(r)?;
        Ok(())
    }

    fn device_tree_node(&self, w: &mut FdtWriter, base: u64, size: u64, _irq: Option<u32>) {
        w.node(&format!("plic@{base:x}"), |w| {
            w.property_strings("compatible", &["sifive,plic-1.0.0", "riscv,plic0"]);
            w.property_cells("reg", &fdt::reg_cells(base, size));
            w.property_u32("riscv,ndev", PLIC_NDEV);
            // Context 0 = M mode, context 1 = S mode, as the PLIC model numbers them.
            w.property_cells(
                "interrupts-extended",
                &[
                    fdt::PHANDLE_CPU_INTC,
                    fdt::IRQ_M_EXT,
                    fdt::PHANDLE_CPU_INTC,
                    fdt::IRQ_S_EXT,
                ],
            );
            w.property_u32("#interrupt-cells", 1);
            w.property_empty("interrupt-controller");
            w.property_u32("#address-cells", 0);
            w.property_u32("phandle", fdt::PHANDLE_PLIC);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAIM_M: u64 = CONTEXT_BASE + 4;
    const CLAIM_S: u64 = CONTEXT_BASE + CONTEXT_STRIDE + 4;
    const THRESHOLD_S: u64 = CONTEXT_BASE + CONTEXT_STRIDE;
    const ENABLE_S: u64 = ENABLE_BASE + ENABLE_STRIDE;

    /// A PLIC with sources 1 and 5 at priorities 1 and 3, enabled for S mode only.
    fn configured() -> Plic {
        let mut p = Plic::new();
        p.write(4, 4, 1);
        p.write(5 * 4, 4, 3);
        p.write(ENABLE_S, 4, (1 << 1) | (1 << 5));
        p
    }

    #[test]
    fn level_interrupt_reaches_seip_only_when_enabled_and_above_threshold() {
        let mut p = configured();
        assert!(!p.seip());
        p.set_source_level(1, true);
        assert!(p.seip());
        assert!(!p.meip(), "not enabled for M mode");
        assert_eq!(p.read(PENDING_BASE, 4), 1 << 1);
        p.write(THRESHOLD_S, 4, 1);
        assert!(!p.seip(), "priority 1 does not exceed threshold 1");
        p.write(THRESHOLD_S, 4, 0);
        assert!(p.seip());
        p.write(ENABLE_S, 4, 0);
        assert!(!p.seip());
    }

    #[test]
    fn claim_takes_highest_priority_and_complete_re_arms_a_high_line() {
        let mut p = configured();
        p.set_source_level(1, true);
        p.set_source_level(5, true);
        assert_eq!(p.read(CLAIM_S, 4), 5);
        assert_eq!(p.read(CLAIM_S, 4), 1);
        assert_eq!(p.read(CLAIM_S, 4), 0, "both in service");
        assert!(!p.seip());
        // Source 1's device has been served: its line drops before the complete.
        p.set_source_level(1, false);
        p.write(CLAIM_S, 4, 1);
        assert!(!p.seip());
        // Source 5's line is still high: completing makes it pending again.
        p.write(CLAIM_S, 4, 5);
        assert!(p.seip());
        assert_eq!(p.read(CLAIM_S, 4), 5);
    }

    #[test]
    fn ties_go_to_the_lowest_source_and_priority_zero_never_claims() {
        let mut p = Plic::new();
        p.write(ENABLE_BASE, 4, 0xffff_ffff);
        assert_eq!(
            p.read(ENABLE_BASE, 4),
            0xffff_fffe,
            "source 0 does not exist"
        );
        p.set_source_level(7, true);
        assert_eq!(p.read(CLAIM_M, 4), 0, "priority 0 is disabled");
        assert!(!p.meip());
        p.write(7 * 4, 4, 2);
        p.write(3 * 4, 4, 2);
        p.set_source_level(3, true);
        assert!(p.meip());
        assert_eq!(p.read(CLAIM_M, 4), 3);
        assert_eq!(p.read(CLAIM_M, 4), 7);
    }

    #[test]
    fn complete_for_a_context_without_the_enable_is_ignored() {
        let mut p = configured();
        p.set_source_level(5, true);
        assert_eq!(p.read(CLAIM_S, 4), 5);
        p.write(CLAIM_M, 4, 5); // not enabled for context 0
        assert!(!p.seip(), "still in service");
        p.write(CLAIM_S, 4, 5);
        assert!(p.seip());
    }

    #[test]
    fn registers_mask_their_fields() {
        let mut p = Plic::new();
        p.write(4, 4, 0xffff_ffff);
        assert_eq!(p.read(4, 4), 7);
        p.write(0, 4, 5);
        assert_eq!(p.read(0, 4), 0, "source 0 has no priority");
        p.write(PENDING_BASE, 4, 0xffff_ffff);
        assert_eq!(p.read(PENDING_BASE, 4), 0, "pending is read-only");
        p.write(THRESHOLD_S, 4, 0x1f);
        assert_eq!(p.read(THRESHOLD_S, 4), 7);
        // Narrow reads never claim.
        p.write(THRESHOLD_S, 4, 0);
        p.write(ENABLE_S, 4, 2);
        p.set_source_level(1, true);
        assert_eq!(p.read(CLAIM_S, 1), 0);
        assert!(p.seip());
        // An 8-byte access is two registers.
        p.write(8, 8, 3 | 6 << 32);
        assert_eq!(p.read(8, 4), 3);
        assert_eq!(p.read(12, 4), 6);
        assert_eq!(p.read(8, 8), 3 | 6 << 32);
    }

    #[test]
    fn state_round_trips_and_rejects_invalid_values() {
        let mut p = configured();
        p.set_source_level(1, true);
        p.set_source_level(5, true);
        assert_eq!(p.read(CLAIM_S, 4), 5);
        let mut out = Vec::new();
        p.save_state(&mut out);
        out.push(0xaa); // whatever follows is left for the next device
        let mut input = &out[..];
        let q = Plic::load_state(&mut input).unwrap();
        assert_eq!(q, p);
        assert_eq!(input, &[0xaa]);
        let mut again = Vec::new();
        q.save_state(&mut again);
        assert_eq!(again, out[..out.len() - 1]);

        let mut bad = out.clone();
        bad[0] = 8; // priority of source 1 out of range
        assert_eq!(
            Plic::load_state(&mut &bad[..]),
            Err(StateError::Invalid("plic priority"))
        );
        let pending_at = PLIC_NDEV as usize * 8;
        let mut bad = out.clone();
        bad[pending_at] = 1; // source 0 pending
        assert_eq!(
            Plic::load_state(&mut &bad[..]),
            Err(StateError::Invalid("plic pending"))
        );
        assert_eq!(
            Plic::load_state(&mut &out[..10]),
            Err(StateError::Truncated)
        );
    }
}
