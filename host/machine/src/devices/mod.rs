//! The board's memory-mapped devices, one file each, behind one [`Device`] trait.
//!
//! Which devices the board has, where they sit and where their interrupt lines go is one
//! table, [`crate::board`]'s `board_devices!` invocation; [`crate::bus::Bus`] dispatches
//! accesses through it, [`crate::machine::Machine::save_state`] saves the devices in its
//! order, and [`crate::fdt`] asks each for its device-tree node. Adding a device is a row
//! there plus an implementation of [`Device`].

pub mod clint;
pub mod htif;
pub mod offload;
pub mod plic;
pub mod uart;
pub mod virtio_console;

use crate::fdt::FdtWriter;
use crate::state::{Reader, StateError};

/// What a device access may touch besides the device itself.
#[derive(Debug)]
pub struct MmioContext<'a> {
    /// `mcycle` at the access: the machine's clock.
    pub mcycle: u64,
    /// Console output the caller drains (HTIF console and UART THR bytes go here).
    pub console: &'a mut Vec<u8>,
}

/// A memory-mapped device of the board.
///
/// A device's whole state is what [`Device::save_state`] writes: the state hash covers
/// those bytes and snapshots store them, so anything that can influence a later access
/// must be in them, and [`Device::load_state`] must accept exactly what was saved and
/// refuse values the device could never hold.
pub trait Device: std::fmt::Debug {
    /// The device's name (tests and diagnostics).
    fn name(&self) -> &'static str;

    /// A naturally aligned load of `size` bytes (1, 2, 4 or 8) at `offset` in the device's
    /// window; `None` means an access fault.
    fn read(&mut self, offset: u64, size: u32, cx: &mut MmioContext<'_>) -> Option<u64>;

    /// A naturally aligned store of the low `size` bytes of `value` at `offset`; `None`
    /// means an access fault.
    fn write(&mut self, offset: u64, size: u32, value: u64, cx: &mut MmioContext<'_>)
        -> Option<()>;

    /// Appends the canonical encoding of the device's state (fixed-width little-endian
    /// fields, see [`crate::state`]).
    fn save_state(&self, out: &mut Vec<u8>);

    /// Restores what [`Device::save_state`] wrote, consuming exactly those bytes.
    fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError>;

    /// Writes the device's node under `/soc` for a window at `base` of `size` bytes whose
    /// interrupt output, if any, is PLIC source `irq`.
    fn device_tree_node(&self, w: &mut FdtWriter, base: u64, size: u64, irq: Option<u32>);

    /// The level of the device's interrupt output (for devices whose row names a PLIC
    /// source); `false` for devices without one.
    fn interrupt_line(&self) -> bool {
        false
    }
}

/// Where one device of the board sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSlot {
    /// Which device.
    pub id: DeviceId,
    /// Base physical address of its window.
    pub base: u64,
    /// Size of its window in bytes.
    pub size: u64,
    /// The PLIC source its interrupt output drives, if it has one.
    pub irq: Option<u32>,
    /// Position of its node among the devices in the device tree (the blob, hence the
    /// state hash, depends on the order).
    pub dt_position: usize,
}

impl DeviceSlot {
    /// The offset of `pa` inside this device's window, if it is inside.
    #[inline]
    pub fn offset_of(&self, pa: u64) -> Option<u64> {
        let off = pa.wrapping_sub(self.base);
        (off < self.size).then_some(off)
    }
}

/// Declares the board's devices from one list: the [`DeviceId`] enum, the [`Devices`]
/// struct holding one of each (typed fields, for the hart's timer and interrupt lines),
/// and the [`DEVICES`] table of where they sit, in the order of the canonical state.
macro_rules! board_devices {
    ($(
        $(#[$doc:meta])*
        $field:ident: $ty:ty => $variant:ident at $base:expr, size $size:expr,
            irq $irq:expr, dt $dt:expr;
    )*) => {
        /// Names one device of the board.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum DeviceId {
            $($(#[$doc])* $variant,)*
        }

        /// One of each device of the board.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Devices {
            $($(#[$doc])* pub $field: $ty,)*
        }

        impl Devices {
            /// Every device at reset.
            pub fn new() -> Self {
                Self { $($field: <$ty>::new(),)* }
            }

            /// The device `id`.
            pub fn get(&self, id: DeviceId) -> &dyn $crate::devices::Device {
                match id { $(DeviceId::$variant => &self.$field,)* }
            }

            /// The device `id`, writable.
            pub fn get_mut(&mut self, id: DeviceId) -> &mut dyn $crate::devices::Device {
                match id { $(DeviceId::$variant => &mut self.$field,)* }
            }
        }

        impl Default for Devices {
            fn default() -> Self {
                Self::new()
            }
        }

        /// Where each device sits, in the order of the canonical state (the state hash
        /// and snapshots depend on it: append new devices at the end).
        pub const DEVICES: &[$crate::devices::DeviceSlot] = &[
            $($crate::devices::DeviceSlot {
                id: DeviceId::$variant,
                base: $base,
                size: $size,
                irq: $irq,
                dt_position: $dt,
            },)*
        ];
    };
}
pub(crate) use board_devices;

pub use crate::board::{DeviceId, Devices, DEVICES};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_consistent() {
        let mut positions: Vec<usize> = DEVICES.iter().map(|d| d.dt_position).collect();
        positions.sort_unstable();
        assert_eq!(positions, (0..DEVICES.len()).collect::<Vec<_>>());
        for (i, a) in DEVICES.iter().enumerate() {
            assert!(a.size > 0);
            for b in &DEVICES[i + 1..] {
                assert_ne!(a.id, b.id);
                assert!(
                    a.base + a.size <= b.base || b.base + b.size <= a.base,
                    "{:?} overlaps {:?}",
                    a.id,
                    b.id
                );
            }
            assert!(
                a.base + a.size <= crate::board::DTB_BASE
                    || a.base >= crate::board::DTB_BASE + crate::board::DTB_SIZE
            );
            assert!(a.base + a.size <= crate::board::RAM_BASE);
            // The optional offload channel's window is free on every board.
            let (base, size) = (crate::board::OFFLOAD_BASE, crate::board::OFFLOAD_SIZE);
            assert!(
                a.base + a.size <= base || base + size <= a.base,
                "{:?}",
                a.id
            );
        }
        assert!(DEVICES
            .iter()
            .all(|d| d.irq != Some(crate::board::OFFLOAD_IRQ)));
    }
}
