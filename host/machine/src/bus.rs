//! The physical address space: memory ranges (RAM, flash drives), the device tree ROM
//! and the memory-mapped devices, at the addresses of [`crate::board`].

use crate::board::{Devices, DEVICES, DTB_BASE, DTB_SIZE, OFFLOAD_BASE, OFFLOAD_IRQ, OFFLOAD_SIZE};
use crate::devices::offload::OffloadChannel;
use crate::devices::virtio_console::Dma;
use crate::devices::{Device, DeviceSlot, MmioContext};
use crate::memory::MemRange;
use std::num::NonZeroU32;

/// A flash drive: a file-backed memory range above RAM (a `pmem-region` for Linux).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashDrive {
    /// The label the configuration gave it (`label:NAME`).
    pub label: String,
    /// Whether guest writes go back to the host file when the run ends.
    pub shared: bool,
    /// Length of the image it was loaded from (the range is rounded up to 2 MiB).
    pub image_length: u64,
    /// The bytes.
    pub mem: MemRange,
}

/// A memory region of the bus: RAM or one flash drive. Devices and the DTB ROM are not
/// memory regions; where a translation may lead to either, it holds an
/// `Option<RegionId>` (`None`: not memory).
///
/// The raw value is 1 for RAM and `2 + i` for flash drive `i`, so that `Option<RegionId>`
/// is a `u32` with `None` as 0 (translated code compares the raw value; see
/// [`RegionId::raw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct RegionId(NonZeroU32);

impl RegionId {
    /// Main memory.
    pub const RAM: RegionId = RegionId(NonZeroU32::MIN);

    /// Flash drive `index` (in address order).
    pub fn flash(index: usize) -> Self {
        let raw = u32::try_from(index)
            .ok()
            .and_then(|i| i.checked_add(2))
            .and_then(NonZeroU32::new)
            .expect("a bus has far fewer than 2^32 flash drives");
        RegionId(raw)
    }

    /// The flash drive index of this region, `None` for RAM.
    pub fn flash_index(self) -> Option<usize> {
        (self != Self::RAM).then(|| (self.0.get() - 2) as usize)
    }

    /// The raw value, as an `Option<RegionId>` holding it is laid out in memory.
    pub const fn raw(self) -> u32 {
        self.0.get()
    }
}

/// Everything the hart reaches through physical addresses.
#[derive(Debug)]
pub struct Bus {
    /// Main memory at [`crate::board::RAM_BASE`].
    pub ram: MemRange,
    /// Flash drives, in increasing address order.
    pub flash: Vec<FlashDrive>,
    /// The generated device tree blob, read-only at [`DTB_BASE`].
    pub dtb: Vec<u8>,
    /// The memory-mapped devices, at the places [`DEVICES`] gives them.
    pub devices: Devices,
    /// The offload channel at [`OFFLOAD_BASE`], on boards that have it.
    pub offload: Option<OffloadChannel>,
    /// Console bytes the guest wrote (HTIF and UART), for the caller to drain.
    pub console: Vec<u8>,
    /// RAM the devices wrote (RAM offset, length) since the hart last looked: it drops
    /// decoded instructions and translated blocks there before it runs on (see
    /// `Hart::sync_device_writes`). Not state.
    pub dma_log: Vec<(u64, u64)>,
    /// Guest stores to flash drives since this bus was built (or its machine loaded):
    /// host bookkeeping for stall detection, not state (never saved nor hashed).
    pub flash_stores: u64,
}

impl Bus {
    /// A bus over `ram`, `flash` and the device tree `dtb`, with every device at reset
    /// and no console output.
    pub fn new(ram: MemRange, flash: Vec<FlashDrive>, dtb: Vec<u8>) -> Self {
        Self {
            ram,
            flash,
            dtb,
            devices: Devices::new(),
            offload: None,
            console: Vec::new(),
            dma_log: Vec::new(),
            flash_stores: 0,
        }
    }

    /// The memory region holding `pa` and the offset of `pa` inside it; `None` if `pa`
    /// is not memory.
    #[inline(always)]
    pub fn find_memory(&self, pa: u64) -> Option<(RegionId, u64)> {
        if self.ram.contains(pa) {
            return Some((RegionId::RAM, pa - self.ram.start));
        }
        self.flash
            .iter()
            .position(|f| f.mem.contains(pa))
            .map(|i| (RegionId::flash(i), pa - self.flash[i].mem.start))
    }

    /// Memory region `region` (as [`Bus::find_memory`] named it).
    #[inline(always)]
    pub fn region(&self, region: RegionId) -> &MemRange {
        match region.flash_index() {
            None => &self.ram,
            Some(i) => &self.flash[i].mem,
        }
    }

    /// Memory region `region`, writable.
    #[inline(always)]
    pub fn region_mut(&mut self, region: RegionId) -> &mut MemRange {
        match region.flash_index() {
            None => &mut self.ram,
            Some(i) => {
                // Every guest store to a flash drive comes through here (translated code
                // stores to RAM only).
                self.flash_stores = self.flash_stores.wrapping_add(1);
                &mut self.flash[i].mem
            }
        }
    }

    /// The device whose window holds `pa`, and the offset of `pa` in it.
    #[inline]
    fn device_at(pa: u64) -> Option<(&'static DeviceSlot, u64)> {
        DEVICES
            .iter()
            .find_map(|slot| slot.offset_of(pa).map(|off| (slot, off)))
    }

    /// A load of `size` bytes (naturally aligned) from a device or the DTB ROM at `pa`;
    /// `None` means nothing answers there (an access fault).
    pub fn read_mmio(&mut self, pa: u64, size: u32, mcycle: u64) -> Option<u64> {
        if let Some((slot, off)) = Self::device_at(pa) {
            let mut cx = MmioContext {
                mcycle,
                console: &mut self.console,
            };
            let value = self.devices.get_mut(slot.id).read(off, size, &mut cx);
            self.update_interrupt_line(slot);
            return value;
        }
        if let Some(off) = offset_in(pa, OFFLOAD_BASE, OFFLOAD_SIZE) {
            let value = self.offload.as_mut()?.mmio_read(off, size);
            self.update_offload_line();
            return value;
        }
        if let Some(off) = offset_in(pa, DTB_BASE, DTB_SIZE) {
            let mut value = 0u64;
            for i in 0..size as u64 {
                let byte = self.dtb.get((off + i) as usize).copied().unwrap_or(0);
                value |= (byte as u64) << (8 * i);
            }
            return Some(value);
        }
        None
    }

    /// A store of `size` bytes to a device at `pa` (at `mcycle`); `None` means an access
    /// fault.
    pub fn write_mmio(&mut self, pa: u64, size: u32, value: u64, mcycle: u64) -> Option<()> {
        if let Some(off) = offset_in(pa, OFFLOAD_BASE, OFFLOAD_SIZE) {
            let mut dma = Dma {
                ram: &mut self.ram,
                log: &mut self.dma_log,
            };
            let result = self
                .offload
                .as_mut()?
                .mmio_write(off, size, value, mcycle, &mut dma);
            self.update_offload_line();
            return result;
        }
        let (slot, off) = Self::device_at(pa)?;
        let mut cx = MmioContext {
            mcycle,
            console: &mut self.console,
        };
        let result = self
            .devices
            .get_mut(slot.id)
            .write(off, size, value, &mut cx);
        self.update_interrupt_line(slot);
        result
    }

    /// Propagates the interrupt output of the device in `slot` to its PLIC source.
    fn update_interrupt_line(&mut self, slot: &DeviceSlot) {
        if let Some(irq) = slot.irq {
            let level = self.devices.get(slot.id).interrupt_line();
            self.devices.plic.set_source_level(irq, level);
        }
    }

    /// Propagates the offload channel's interrupt output to its PLIC source.
    pub(crate) fn update_offload_line(&mut self) {
        if let Some(channel) = &self.offload {
            let level = channel.interrupt_line();
            self.devices.plic.set_source_level(OFFLOAD_IRQ, level);
        }
    }

    /// Delivers the offload channel's answers due at `mcycle` (raising its interrupt
    /// line); returns whether any was.
    pub(crate) fn deliver_offload(&mut self, mcycle: u64) -> bool {
        let delivered = self.offload.as_mut().is_some_and(|c| c.deliver_due(mcycle));
        if delivered {
            self.pump_offload(mcycle);
        }
        delivered
    }

    /// Lets the offload channel's transport move delivered responses into guest memory
    /// (virtio), then propagates its interrupt line.
    pub(crate) fn pump_offload(&mut self, mcycle: u64) {
        if let Some(channel) = self.offload.as_mut() {
            let mut dma = Dma {
                ram: &mut self.ram,
                log: &mut self.dma_log,
            };
            channel.pump(mcycle, &mut dma);
        }
        self.update_offload_line();
    }

    /// Whether the interrupt lines into the hart's `mip.MEIP`/`mip.SEIP` are raised.
    #[inline]
    pub fn external_interrupts(&self) -> (bool, bool) {
        (self.devices.plic.meip(), self.devices.plic.seip())
    }
}

fn offset_in(pa: u64, base: u64, size: u64) -> Option<u64> {
    let off = pa.wrapping_sub(base);
    (off < size).then_some(off)
}
