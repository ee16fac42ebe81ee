//! The offload channel's second transport: a virtio console (device ID 3) over virtio-mmio
//! version 2, so that Debian's stock kernel drives the channel (`virtio_console` is built
//! in, `virtio_mmio` is a module). The timing core is [`super::offload`]'s, unchanged;
//! this file is the register file, the split virtqueues and the framing on top of it.
//! `docs/parallel-builds.md` has the design.
//!
//! # What the guest sees
//! - A `virtio,mmio` node at [`crate::board::OFFLOAD_BASE`] with PLIC source
//!   [`crate::board::OFFLOAD_IRQ`]; `MagicValue` "virt", `Version` 2, `DeviceID` 3,
//!   `VendorID` [`VENDOR_ID`].
//! - Features: `VIRTIO_F_VERSION_1` and `VIRTIO_CONSOLE_F_MULTIPORT` (nothing else: no
//!   indirect descriptors, no event index). A driver that accepts anything else, or not
//!   `VERSION_1`, has `FEATURES_OK` cleared when it sets it.
//! - Config space: `cols = 0`, `rows = 0`, `max_nr_ports = 2`, `emerg_wr` reads 0 and
//!   stores to it are ignored.
//! - Six queues of at most [`QUEUE_NUM_MAX`] entries: 0/1 port 0's receive/transmit, 2/3
//!   the control receive/transmit queues, 4/5 port 1's receive/transmit. Only port 1
//!   exists: after the driver's `DEVICE_READY` the device sends `DEVICE_ADD` for port 1,
//!   and after the driver's `PORT_READY` for it, `PORT_NAME` ([`PORT_NAME`]) and
//!   `PORT_OPEN 1`. Linux then has `/dev/vport0p1` (the first virtio console device),
//!   with `/sys/class/virtio-ports/vport0p1/name` = `cmbuild.offload`. Bytes sent on
//!   port 0 are consumed and dropped; nothing is ever received there.
//!
//! # Framing
//! Port 1 carries frames both ways: `tag u64 LE, length u64 LE, bytes`. A transmit
//! frame is submitted to the timing core when its last byte arrives; its submission cycle
//! is right after the `QueueNotify` store that carried that byte (the same rule as the
//! register interface's `SUBMIT`). A frame longer than [`super::offload::MAX_REQUEST`]
//! is skipped (its bytes consumed and dropped), and a frame whose tag is in use, or that
//! comes when [`super::offload::MAX_JOBS`] tags are in use, is refused: either way the
//! device answers it at once, outside the timing core and the journal, with an empty
//! frame (`tag, 0`) — a real response is never empty (`docs/parallel-builds.md`: every
//! body starts with a JSON line). At most [`MAX_REFUSALS`] refusals wait to be received;
//! past that they are dropped.
//!
//! A delivered response (at its `visible_at`, by the timing core) becomes the frame
//! `tag, length, response` on port 1's receive stream. The stream fills the receive
//! buffers the guest has posted, in order, each as full as it can be (a buffer may end
//! in one frame and begin the next), while the driver has the port open (Linux drops
//! what arrives on a port no process has open); what does not fit stays in the device
//! until the guest posts more buffers. The order of frames: a frame begun is finished
//! first, then waiting refusals, then responses in the order they became visible.
//!
//! # Device work and guest memory
//! The device works only when the guest stores to `QueueNotify` (a queue was given
//! buffers), sets `DRIVER_OK`, or when the timing core delivers a response (at a cycle
//! boundary, before the instruction at `visible_at`). It reads and writes guest RAM
//! through [`Dma`], which marks the pages dirty and logs each write so that the hart
//! drops decoded instructions and translated blocks in them before it runs anything
//! again (`Bus::dma_log`, drained at the top of the hart's run loop). Every ring and
//! buffer address must lie in RAM; a ring that breaks the rules (an index out of range,
//! an indirect or over-long descriptor chain, an `avail.idx` that moved by more than the
//! queue's size, a buffer outside RAM) makes the device set `DEVICE_NEEDS_RESET` and do
//! nothing more until the driver resets it. Descriptor chains are followed at most queue
//! size steps. A reset (`Status = 0`) forgets the queues, the features, the control state
//! and a transmit frame in progress; the receive stream and the timing core stay.

use std::collections::VecDeque;

use super::offload::{OffloadChannel, MAX_REQUEST};
use crate::board::RAM_BASE;
use crate::fdt::{self, FdtWriter};
use crate::memory::{MemRange, PAGE_SIZE};
use crate::state::{put_u64, put_u8, Reader, StateError};

/// `MagicValue`: "virt" little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// `VendorID`: "cmbd" little-endian (any value; Linux does not look).
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"cmbd");
/// `DeviceID` of a console.
pub const DEVICE_ID: u32 = 3;
/// Entries a queue can have at most (`QueueNumMax`).
pub const QUEUE_NUM_MAX: u32 = 128;
/// Number of queues (ports 0 and 1 and the control queues).
pub const QUEUES: usize = 6;
/// The name port 1 announces.
pub const PORT_NAME: &str = "cmbuild.offload";
/// Refusals that may wait to be received; further ones are dropped.
pub const MAX_REFUSALS: usize = 64;
/// Control messages that may wait for a control receive buffer; further ones are dropped.
pub const MAX_CONTROL: usize = 16;

/// `VIRTIO_CONSOLE_F_MULTIPORT`.
pub const F_MULTIPORT: u64 = 1 << 1;
/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// What the device offers.
pub const DEVICE_FEATURES: u64 = F_MULTIPORT | F_VERSION_1;

/// Register offsets of virtio-mmio version 2.
pub mod reg {
    /// `MagicValue`.
    pub const MAGIC: u64 = 0x000;
    /// `Version`.
    pub const VERSION: u64 = 0x004;
    /// `DeviceID`.
    pub const DEVICE_ID: u64 = 0x008;
    /// `VendorID`.
    pub const VENDOR_ID: u64 = 0x00c;
    /// `DeviceFeatures`.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// `DeviceFeaturesSel`.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// `DriverFeatures`.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// `DriverFeaturesSel`.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// `QueueSel`.
    pub const QUEUE_SEL: u64 = 0x030;
    /// `QueueNumMax`.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// `QueueNum`.
    pub const QUEUE_NUM: u64 = 0x038;
    /// `QueueReady`.
    pub const QUEUE_READY: u64 = 0x044;
    /// `QueueNotify`.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// `InterruptStatus`.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// `InterruptACK`.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// `Status`.
    pub const STATUS: u64 = 0x070;
    /// `QueueDescLow`.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// `QueueDescHigh`.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// `QueueDriverLow` (the available ring).
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// `QueueDriverHigh`.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// `QueueDeviceLow` (the used ring).
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// `QueueDeviceHigh`.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// `ConfigGeneration`.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// `Status` bits.
pub mod status {
    /// `ACKNOWLEDGE`.
    pub const ACKNOWLEDGE: u32 = 1;
    /// `DRIVER`.
    pub const DRIVER: u32 = 2;
    /// `DRIVER_OK`.
    pub const DRIVER_OK: u32 = 4;
    /// `FEATURES_OK`.
    pub const FEATURES_OK: u32 = 8;
    /// `DEVICE_NEEDS_RESET`.
    pub const NEEDS_RESET: u32 = 0x40;
    /// `FAILED`.
    pub const FAILED: u32 = 0x80;
}

/// Control events (`struct virtio_console_control`'s `event`).
pub mod event {
    /// Driver: the device is ready (value 1) or failed (0).
    pub const DEVICE_READY: u16 = 0;
    /// Device: add port `id`.
    pub const DEVICE_ADD: u16 = 1;
    /// Driver: port `id` is ready (1) or failed (0).
    pub const PORT_READY: u16 = 3;
    /// Device: port `id` is a console.
    pub const CONSOLE_PORT: u16 = 4;
    /// Both: the port is open (1) or closed (0) on the sender's side.
    pub const PORT_OPEN: u16 = 6;
    /// Device: the port's name follows the header.
    pub const PORT_NAME: u16 = 7;
}

/// Queue indices.
const PORT0_TX: usize = 1;
const CONTROL_RX: usize = 2;
const CONTROL_TX: usize = 3;
const PORT1_RX: usize = 4;
const PORT1_TX: usize = 5;
/// `VIRTQ_DESC_F_NEXT`, `_WRITE`, `_INDIRECT`.
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
const DESC_INDIRECT: u16 = 4;
/// `InterruptStatus` bit 0: a used buffer.
const INT_VRING: u32 = 1;
/// First field of the channel's state with this transport (instead of
/// [`super::offload::STATE_MAGIC`]).
pub const STATE_MAGIC: u64 = u64::from_le_bytes(*b"CMOFVIO1");

/// Guest RAM as the device reaches it: reads and writes bounded to RAM, every write
/// marking its pages dirty and logged (RAM offset, length) for the hart, which drops
/// decoded instructions and translated blocks there before it runs on.
#[derive(Debug)]
pub struct Dma<'a> {
    /// RAM.
    pub ram: &'a mut MemRange,
    /// Where writes are logged.
    pub log: &'a mut Vec<(u64, u64)>,
}

impl Dma<'_> {
    fn offset(&self, pa: u64, len: u64) -> Option<u64> {
        let off = pa.checked_sub(RAM_BASE)?;
        (off.checked_add(len)? <= self.ram.len()).then_some(off)
    }

    fn read(&self, pa: u64, len: u64) -> Option<&[u8]> {
        let off = self.offset(pa, len)? as usize;
        Some(&self.ram.bytes()[off..off + len as usize])
    }

    fn read_u16(&self, pa: u64) -> Option<u16> {
        Some(u16::from_le_bytes(self.read(pa, 2)?.try_into().ok()?))
    }

    /// Writes `bytes` at guest-physical `pa`, which must lie in RAM.
    pub fn write(&mut self, pa: u64, bytes: &[u8]) -> Option<()> {
        let off = self.offset(pa, bytes.len() as u64)?;
        if bytes.is_empty() {
            return Some(());
        }
        self.ram.write_bytes(off, bytes).then_some(())?;
        match self.log.last_mut() {
            Some((start, len)) if *start + *len == off => *len += bytes.len() as u64,
            _ => self.log.push((off, bytes.len() as u64)),
        }
        Some(())
    }
}

/// One split virtqueue's registers and the device's position in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Queue {
    num: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
    /// The next available-ring entry the device will take.
    last_avail: u16,
    /// The used ring's next index.
    used_idx: u16,
}

/// A descriptor chain taken from a queue: its head and buffers (address, length,
/// device-writable).
type Chain = (u16, Vec<(u64, u32, bool)>);

/// Why the device stopped: the guest broke a rule of the rings.
#[derive(Debug)]
struct Broken;

impl Queue {
    fn usable(&self) -> bool {
        self.ready && self.num != 0
    }

    /// The next available chain, if any (`Err` if the ring breaks the rules).
    fn pop(&mut self, dma: &Dma<'_>) -> Result<Option<Chain>, Broken> {
        let num = self.num as u64;
        let avail_idx = dma.read_u16(self.driver.wrapping_add(2)).ok_or(Broken)?;
        let waiting = avail_idx.wrapping_sub(self.last_avail);
        if waiting == 0 {
            return Ok(None);
        }
        if waiting as u64 > num {
            return Err(Broken);
        }
        let slot = self.last_avail as u64 % num;
        let head = dma
            .read_u16(self.driver.wrapping_add(4 + 2 * slot))
            .ok_or(Broken)?;
        let mut buffers = Vec::new();
        let mut index = head;
        loop {
            if index as u64 >= num || buffers.len() as u64 >= num {
                return Err(Broken);
            }
            let d = dma
                .read(self.desc.wrapping_add(16 * index as u64), 16)
                .ok_or(Broken)?;
            let addr = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
            let flags = u16::from_le_bytes(d[12..14].try_into().expect("2 bytes"));
            let next = u16::from_le_bytes(d[14..16].try_into().expect("2 bytes"));
            if flags & DESC_INDIRECT != 0 || dma.offset(addr, len as u64).is_none() {
                return Err(Broken);
            }
            buffers.push((addr, len, flags & DESC_WRITE != 0));
            if flags & DESC_NEXT == 0 {
                break;
            }
            index = next;
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Some((head, buffers)))
    }

    /// Returns chain `head` to the driver with `written` bytes written.
    fn push(&mut self, dma: &mut Dma<'_>, head: u16, written: u32) -> Result<(), Broken> {
        let slot = self.used_idx as u64 % self.num as u64;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&(head as u32).to_le_bytes());
        elem[4..].copy_from_slice(&written.to_le_bytes());
        dma.write(self.device.wrapping_add(4 + 8 * slot), &elem)
            .ok_or(Broken)?;
        self.used_idx = self.used_idx.wrapping_add(1);
        dma.write(self.device.wrapping_add(2), &self.used_idx.to_le_bytes())
            .ok_or(Broken)
    }
}

/// The frame being written to port 1's receive stream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RxFrame {
    tag: u64,
    body: Vec<u8>,
    /// Bytes of `tag, length, body` already in the guest's buffers.
    sent: u64,
}

impl RxFrame {
    fn len(&self) -> u64 {
        16 + self.body.len() as u64
    }

    /// Writes the next `n` bytes of the frame (at most what is left) at `pa`.
    fn copy_out(&mut self, dma: &mut Dma<'_>, pa: u64, n: u64) -> Result<(), Broken> {
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&self.tag.to_le_bytes());
        header[8..].copy_from_slice(&(self.body.len() as u64).to_le_bytes());
        let (from, to) = (self.sent, self.sent + n);
        if from < 16 {
            let h = &header[from as usize..to.min(16) as usize];
            dma.write(pa, h).ok_or(Broken)?;
        }
        if to > 16 {
            let b = &self.body[from.max(16) as usize - 16..to as usize - 16];
            dma.write(pa + (16u64.saturating_sub(from)), b)
                .ok_or(Broken)?;
        }
        self.sent = to;
        Ok(())
    }
}

/// The virtio-console transport's state (saved and hashed with the channel's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtioConsole {
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    queues: [Queue; QUEUES],
    /// Port 1 was announced (`DEVICE_ADD`).
    port_added: bool,
    /// The driver has port 1 open (its last `PORT_OPEN`).
    port_open: bool,
    /// Control messages waiting for a control receive buffer.
    control: VecDeque<Vec<u8>>,
    /// The transmit frame being received: its header and body so far.
    tx: Vec<u8>,
    /// Bytes still to drop of a transmit frame longer than `MAX_REQUEST`.
    tx_skip: u64,
    /// The tag of that frame.
    tx_skip_tag: u64,
    /// Refused tags whose empty frames wait to be received.
    refusals: VecDeque<u64>,
    /// The receive frame in progress.
    rx: Option<RxFrame>,
}

fn control_message(id: u32, event: u16, value: u16, extra: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + extra.len());
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m.extend_from_slice(extra);
    m
}

impl VirtioConsole {
    /// The device at reset.
    pub fn new() -> Self {
        Self::default()
    }

    /// The interrupt line: `InterruptStatus` is not zero.
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_status != 0
    }

    /// Whether the driver has port 1 open.
    pub fn port_open(&self) -> bool {
        self.port_open
    }

    fn config_byte(&self, at: u64) -> u8 {
        // cols u16, rows u16, max_nr_ports u32 = 2, emerg_wr u32.
        if at == 4 {
            2
        } else {
            0
        }
    }

    fn reset(&mut self) {
        let keep_refusals = std::mem::take(&mut self.refusals);
        let keep_rx = self.rx.take();
        *self = Self {
            refusals: keep_refusals,
            rx: keep_rx,
            ..Self::default()
        };
    }

    fn broken(&self) -> bool {
        self.status & status::NEEDS_RESET != 0
    }

    fn queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn queue_mut(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A load of `size` bytes at `offset`; `None` faults. Registers take 4-byte loads,
    /// the configuration space 1, 2 and 4.
    pub fn read(&self, offset: u64, size: u32) -> Option<u64> {
        if offset >= reg::CONFIG {
            if !matches!(size, 1 | 2 | 4) || offset % size as u64 != 0 {
                return None;
            }
            let mut value = 0u64;
            for i in 0..size as u64 {
                value |= (self.config_byte(offset - reg::CONFIG + i) as u64) << (8 * i);
            }
            return Some(value);
        }
        if size != 4 || offset % 4 != 0 {
            return None;
        }
        let q = self.queue();
        let value = match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => DEVICE_ID,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => DEVICE_FEATURES as u32,
                1 => (DEVICE_FEATURES >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |_| QUEUE_NUM_MAX),
            reg::QUEUE_READY => q.map_or(0, |q| q.ready as u32),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        };
        Some(value as u64)
    }

    /// A store of `size` bytes at `offset` by an instruction that retires at `mcycle`;
    /// `None` faults. The device's work on a `QueueNotify` happens here, on `core` and
    /// guest RAM.
    pub fn write(
        &mut self,
        offset: u64,
        size: u32,
        value: u64,
        mcycle: u64,
        core: &mut OffloadChannel,
        dma: &mut Dma<'_>,
    ) -> Option<()> {
        if offset >= reg::CONFIG {
            // emerg_wr is not offered: stores to the configuration space do nothing.
            return (matches!(size, 1 | 2 | 4) && offset % size as u64 == 0).then_some(());
        }
        if size != 4 || offset % 4 != 0 {
            return None;
        }
        let v = value as u32;
        let set_low = |field: &mut u64| *field = (*field & !0xffff_ffff) | v as u64;
        let set_high = |field: &mut u64| *field = (*field & 0xffff_ffff) | ((v as u64) << 32);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => match self.driver_features_sel {
                0 => set_low(&mut self.driver_features),
                1 => set_high(&mut self.driver_features),
                _ => {}
            },
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                // Not while the queue is live (the driver must not; ignoring it keeps the
                // ring arithmetic on the size the queue was enabled with).
                if let Some(q) = self.queue_mut().filter(|q| !q.ready) {
                    q.num = v;
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.queue_mut() {
                    // A size that is not a power of two up to the maximum leaves the
                    // queue off.
                    let valid = q.num.is_power_of_two() && q.num <= QUEUE_NUM_MAX;
                    q.ready = v & 1 != 0 && valid;
                    if !q.ready {
                        q.last_avail = 0;
                        q.used_idx = 0;
                    }
                }
            }
            reg::QUEUE_DESC_LOW => self.queue_mut().map_or((), |q| set_low(&mut q.desc)),
            reg::QUEUE_DESC_HIGH => self.queue_mut().map_or((), |q| set_high(&mut q.desc)),
            reg::QUEUE_DRIVER_LOW => self.queue_mut().map_or((), |q| set_low(&mut q.driver)),
            reg::QUEUE_DRIVER_HIGH => self.queue_mut().map_or((), |q| set_high(&mut q.driver)),
            reg::QUEUE_DEVICE_LOW => self.queue_mut().map_or((), |q| set_low(&mut q.device)),
            reg::QUEUE_DEVICE_HIGH => self.queue_mut().map_or((), |q| set_high(&mut q.device)),
            reg::QUEUE_NOTIFY => self.work(Some(v as usize), mcycle, core, dma),
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => {
                if v == 0 {
                    self.reset();
                } else {
                    let mut new = (v & !status::NEEDS_RESET) | (self.status & status::NEEDS_RESET);
                    if new & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
                        let f = self.driver_features;
                        if f & !DEVICE_FEATURES != 0 || f & F_VERSION_1 == 0 {
                            new &= !status::FEATURES_OK;
                        }
                    }
                    let now_ok =
                        new & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0;
                    self.status = new;
                    if now_ok {
                        self.work(None, mcycle, core, dma);
                    }
                }
            }
            _ => {}
        }
        Some(())
    }

    /// Processes the transmit queue `notified` (if any), then fills the receive queues
    /// from what waits. A broken ring sets `DEVICE_NEEDS_RESET`.
    pub(crate) fn work(
        &mut self,
        notified: Option<usize>,
        mcycle: u64,
        core: &mut OffloadChannel,
        dma: &mut Dma<'_>,
    ) {
        if self.broken() {
            return;
        }
        let result = match notified {
            Some(PORT0_TX) => self.drain_tx(PORT0_TX, dma, |_, _| {}),
            Some(CONTROL_TX) => self.control_tx(dma),
            Some(PORT1_TX) => self.port1_tx(mcycle, core, dma),
            _ => Ok(()),
        }
        .and_then(|()| self.fill_control(dma))
        .and_then(|()| self.fill_port1(core, dma));
        if result.is_err() {
            self.status |= status::NEEDS_RESET;
        }
    }

    /// Takes every available chain of transmit queue `q`, hands each readable buffer's
    /// bytes to `each` (with the device), and returns the chains used.
    fn drain_tx(
        &mut self,
        q: usize,
        dma: &mut Dma<'_>,
        mut each: impl FnMut(&mut Self, &[u8]),
    ) -> Result<(), Broken> {
        if !self.queues[q].usable() {
            return Ok(());
        }
        while let Some((head, buffers)) = self.queues[q].pop(dma)? {
            for (addr, len, writable) in buffers {
                if !writable {
                    let bytes = dma.read(addr, len as u64).ok_or(Broken)?;
                    each(self, bytes);
                }
            }
            self.queues[q].push(dma, head, 0)?;
            self.interrupt_status |= INT_VRING;
        }
        Ok(())
    }

    fn control_tx(&mut self, dma: &mut Dma<'_>) -> Result<(), Broken> {
        let mut messages = Vec::new();
        self.drain_tx(CONTROL_TX, dma, |_, bytes| {
            messages.extend_from_slice(bytes)
        })?;
        // One message per chain in practice; take the stream 8 bytes at a time.
        for m in messages.chunks_exact(8) {
            let id = u32::from_le_bytes(m[0..4].try_into().expect("4 bytes"));
            let ev = u16::from_le_bytes(m[4..6].try_into().expect("2 bytes"));
            let value = u16::from_le_bytes(m[6..8].try_into().expect("2 bytes"));
            match ev {
                event::DEVICE_READY if value == 1 && !self.port_added => {
                    self.port_added = true;
                    self.send_control(control_message(1, event::DEVICE_ADD, 0, &[]));
                }
                event::PORT_READY if id == 1 && value == 1 => {
                    self.send_control(control_message(
                        1,
                        event::PORT_NAME,
                        0,
                        PORT_NAME.as_bytes(),
                    ));
                    self.send_control(control_message(1, event::PORT_OPEN, 1, &[]));
                }
                event::PORT_OPEN if id == 1 => self.port_open = value != 0,
                _ => {}
            }
        }
        Ok(())
    }

    fn send_control(&mut self, message: Vec<u8>) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back(message);
        }
    }

    fn port1_tx(
        &mut self,
        mcycle: u64,
        core: &mut OffloadChannel,
        dma: &mut Dma<'_>,
    ) -> Result<(), Broken> {
        self.drain_tx(PORT1_TX, dma, |dev, bytes| dev.take_tx(bytes, mcycle, core))
    }

    /// Feeds transmitted bytes to the framing, submitting each frame it completes.
    fn take_tx(&mut self, mut bytes: &[u8], mcycle: u64, core: &mut OffloadChannel) {
        while !bytes.is_empty() {
            if self.tx_skip > 0 {
                let n = self.tx_skip.min(bytes.len() as u64);
                self.tx_skip -= n;
                bytes = &bytes[n as usize..];
                if self.tx_skip == 0 {
                    let tag = std::mem::take(&mut self.tx_skip_tag);
                    self.refuse(tag);
                }
                continue;
            }
            let want = if self.tx.len() < 16 {
                16 - self.tx.len()
            } else {
                (self.body_len() - (self.tx.len() as u64 - 16)) as usize
            };
            let n = want.min(bytes.len());
            self.tx.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.tx.len() == 16 && self.body_len() > MAX_REQUEST {
                self.tx_skip = self.body_len();
                self.tx_skip_tag = self.tx_tag();
                self.tx.clear();
                continue;
            }
            if self.tx.len() >= 16 && self.tx.len() as u64 - 16 == self.body_len() {
                let tag = self.tx_tag();
                let request = self.tx.split_off(16);
                self.tx.clear();
                if !core.enqueue(tag, request, mcycle) {
                    self.refuse(tag);
                }
            }
        }
    }

    fn tx_tag(&self) -> u64 {
        u64::from_le_bytes(self.tx[0..8].try_into().expect("a whole header"))
    }

    fn body_len(&self) -> u64 {
        u64::from_le_bytes(self.tx[8..16].try_into().expect("a whole header"))
    }

    fn refuse(&mut self, tag: u64) {
        if self.refusals.len() < MAX_REFUSALS {
            self.refusals.push_back(tag);
        }
    }

    /// Hands waiting control messages to the driver, one per control receive chain.
    fn fill_control(&mut self, dma: &mut Dma<'_>) -> Result<(), Broken> {
        let q = CONTROL_RX;
        while !self.control.is_empty() && self.queues[q].usable() {
            let Some((head, buffers)) = self.queues[q].pop(dma)? else {
                break;
            };
            let message = self.control.pop_front().expect("not empty");
            let written = write_chain(dma, &buffers, |at| message.get(at as usize).copied(), 0)?;
            self.queues[q].push(dma, head, written as u32)?;
            self.interrupt_status |= INT_VRING;
        }
        Ok(())
    }

    /// Streams refusals and delivered responses into port 1's receive buffers while the
    /// port is open.
    fn fill_port1(&mut self, core: &mut OffloadChannel, dma: &mut Dma<'_>) -> Result<(), Broken> {
        let q = PORT1_RX;
        if !self.port_open || !self.queues[q].usable() {
            return Ok(());
        }
        loop {
            if self.rx.is_none() {
                self.rx = self.next_frame(core);
            }
            if self.rx.is_none() {
                return Ok(());
            }
            let Some((head, buffers)) = self.queues[q].pop(dma)? else {
                return Ok(());
            };
            let mut written: u64 = 0;
            for (addr, len, writable) in buffers {
                let mut at = 0u64;
                while writable && at < len as u64 {
                    if self.rx.is_none() {
                        // The next frame starts inside the same buffer.
                        self.rx = self.next_frame(core);
                    }
                    let Some(frame) = self.rx.as_mut() else {
                        break;
                    };
                    let n = (len as u64 - at).min(frame.len() - frame.sent);
                    frame.copy_out(dma, addr + at, n)?;
                    at += n;
                    written += n;
                    if frame.sent == frame.len() {
                        self.rx = None;
                    }
                }
            }
            self.queues[q].push(dma, head, written as u32)?;
            self.interrupt_status |= INT_VRING;
        }
    }

    /// The next frame of the receive stream: a refusal, else the oldest delivered
    /// response (whose tag is then free again).
    fn next_frame(&mut self, core: &mut OffloadChannel) -> Option<RxFrame> {
        if let Some(tag) = self.refusals.pop_front() {
            return Some(RxFrame {
                tag,
                body: Vec::new(),
                sent: 0,
            });
        }
        core.pop_completion().map(|c| RxFrame {
            tag: c.tag,
            body: c.response,
            sent: 0,
        })
    }

    /// Appends the canonical encoding of the transport's state.
    pub fn save_state(&self, out: &mut Vec<u8>) {
        for v in [
            self.status,
            self.device_features_sel,
            self.driver_features_sel,
            self.queue_sel,
            self.interrupt_status,
        ] {
            put_u64(out, v as u64);
        }
        put_u64(out, self.driver_features);
        for q in &self.queues {
            put_u64(out, q.num as u64);
            put_u8(out, q.ready as u8);
            put_u64(out, q.desc);
            put_u64(out, q.driver);
            put_u64(out, q.device);
            put_u64(out, q.last_avail as u64);
            put_u64(out, q.used_idx as u64);
        }
        put_u8(out, self.port_added as u8);
        put_u8(out, self.port_open as u8);
        put_u64(out, self.control.len() as u64);
        for m in &self.control {
            put_bytes(out, m);
        }
        put_bytes(out, &self.tx);
        put_u64(out, self.tx_skip);
        put_u64(out, self.tx_skip_tag);
        put_u64(out, self.refusals.len() as u64);
        for &t in &self.refusals {
            put_u64(out, t);
        }
        match &self.rx {
            None => put_u8(out, 0),
            Some(f) => {
                put_u8(out, 1);
                put_u64(out, f.tag);
                put_bytes(out, &f.body);
                put_u64(out, f.sent);
            }
        }
    }

    /// Restores what [`VirtioConsole::save_state`] wrote, refusing what the device could
    /// never hold.
    pub fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError> {
        let invalid = StateError::Invalid;
        let u32_field = |r: &mut Reader<'_>, what| {
            u32::try_from(r.u64()?).map_err(|_| StateError::Invalid(what))
        };
        let mut d = Self::new();
        d.status = u32_field(r, "virtio status")?;
        d.device_features_sel = u32_field(r, "virtio feature selector")?;
        d.driver_features_sel = u32_field(r, "virtio feature selector")?;
        d.queue_sel = u32_field(r, "virtio queue selector")?;
        d.interrupt_status = u32_field(r, "virtio interrupt status")?;
        if d.interrupt_status & !INT_VRING != 0 {
            return Err(invalid("virtio interrupt status"));
        }
        d.driver_features = r.u64()?;
        for q in d.queues.iter_mut() {
            q.num = u32_field(r, "virtio queue size")?;
            q.ready = r.bool("virtio queue ready")?;
            if q.ready && !(q.num.is_power_of_two() && q.num <= QUEUE_NUM_MAX) {
                return Err(invalid("virtio queue size"));
            }
            q.desc = r.u64()?;
            q.driver = r.u64()?;
            q.device = r.u64()?;
            let idx = |r: &mut Reader<'_>| {
                u16::try_from(r.u64()?).map_err(|_| StateError::Invalid("virtio ring index"))
            };
            q.last_avail = idx(r)?;
            q.used_idx = idx(r)?;
            if !q.ready && (q.last_avail != 0 || q.used_idx != 0) {
                return Err(invalid("virtio ring index"));
            }
        }
        d.port_added = r.bool("virtio port added")?;
        d.port_open = r.bool("virtio port open")?;
        let control = r.u64()?;
        if control > MAX_CONTROL as u64 {
            return Err(invalid("virtio control messages"));
        }
        for _ in 0..control {
            d.control
                .push_back(get_bytes(r, 64, "virtio control message")?);
        }
        d.tx = get_bytes(r, 16 + MAX_REQUEST, "virtio transmit frame")?;
        if d.tx.len() >= 16 {
            let body = u64::from_le_bytes(d.tx[8..16].try_into().expect("8 bytes"));
            if body > MAX_REQUEST || d.tx.len() as u64 - 16 >= body {
                return Err(invalid("virtio transmit frame"));
            }
        }
        d.tx_skip = r.u64()?;
        d.tx_skip_tag = r.u64()?;
        if (d.tx_skip > 0 && !d.tx.is_empty()) || (d.tx_skip == 0 && d.tx_skip_tag != 0) {
            return Err(invalid("virtio skipped frame"));
        }
        let refusals = r.u64()?;
        if refusals > MAX_REFUSALS as u64 {
            return Err(invalid("virtio refusals"));
        }
        for _ in 0..refusals {
            d.refusals.push_back(r.u64()?);
        }
        d.rx = if r.bool("virtio receive frame")? {
            let tag = r.u64()?;
            let body = get_bytes(r, super::offload::MAX_RESPONSE, "virtio receive frame")?;
            let sent = r.u64()?;
            let f = RxFrame { tag, body, sent };
            // A frame is dropped as soon as it is all sent.
            if sent >= f.len() {
                return Err(invalid("virtio receive cursor"));
            }
            Some(f)
        } else {
            None
        };
        *self = d;
        Ok(())
    }

    /// The device-tree node of the transport.
    pub fn device_tree_node(w: &mut FdtWriter, base: u64, size: u64, irq: u32) {
        w.node(&format!("virtio_mmio@{base:x}"), |w| {
            w.property_string("compatible", "virtio,mmio");
            w.property_cells("reg", &fdt::reg_cells(base, size));
            w.property_u32("interrupts", irq);
            w.property_u32("interrupt-parent", fdt::PHANDLE_PLIC);
        });
    }
}

/// Writes bytes `source(start..)` into the writable buffers of a chain until `source`
/// runs out; returns how many were written.
fn write_chain(
    dma: &mut Dma<'_>,
    buffers: &[(u64, u32, bool)],
    source: impl Fn(u64) -> Option<u8>,
    start: u64,
) -> Result<u64, Broken> {
    let mut at = start;
    for &(addr, len, writable) in buffers {
        if !writable {
            continue;
        }
        let chunk: Vec<u8> = (0..len as u64).map_while(|i| source(at + i)).collect();
        dma.write(addr, &chunk).ok_or(Broken)?;
        at += chunk.len() as u64;
        if (chunk.len() as u64) < len as u64 {
            break;
        }
    }
    Ok(at - start)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn get_bytes(r: &mut Reader<'_>, limit: u64, what: &'static str) -> Result<Vec<u8>, StateError> {
    let len = r.u64()?;
    if len > limit {
        return Err(StateError::Invalid(what));
    }
    Ok(r.bytes(len)?.to_vec())
}

/// The pages of RAM a logged write touched, as (RAM offset, length) pieces that each stay
/// in one page (what the decode cache's invalidation takes).
pub(crate) fn page_pieces(off: u64, len: u64) -> impl Iterator<Item = (u64, u32)> {
    let end = off + len;
    let mut at = off;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let page_end = (at / PAGE_SIZE + 1) * PAGE_SIZE;
        let piece = (at, (page_end.min(end) - at) as u32);
        at = page_end.min(end);
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::super::offload::{Answer, MAX_JOBS};
    use super::*;

    const RAM: u64 = 4 << 20;
    const NUM: u32 = 8;

    /// A driver doing what Linux's virtio_mmio and virtio_console do, by hand.
    struct Driver {
        core: OffloadChannel,
        ram: MemRange,
        log: Vec<(u64, u64)>,
        mcycle: u64,
        /// Next free descriptor and avail index per queue.
        next_desc: [u16; QUEUES],
        avail_idx: [u16; QUEUES],
        seen_used: [u16; QUEUES],
        next_buf: u64,
    }

    fn ring(q: usize) -> (u64, u64, u64) {
        let base = RAM_BASE + 0x10_0000 + q as u64 * 0x1000;
        (base, base + 0x800, base + 0xc00)
    }

    impl Driver {
        fn new() -> Self {
            Self {
                core: OffloadChannel::new_virtio(100),
                ram: MemRange::new(RAM_BASE, RAM),
                log: Vec::new(),
                mcycle: 1000,
                next_desc: [0; QUEUES],
                avail_idx: [0; QUEUES],
                seen_used: [0; QUEUES],
                next_buf: RAM_BASE + 0x20_0000,
            }
        }

        fn w(&mut self, offset: u64, value: u32) {
            let mut dma = Dma {
                ram: &mut self.ram,
                log: &mut self.log,
            };
            self.mcycle += 1;
            let mcycle = self.mcycle;
            self.core
                .mmio_write(offset, 4, value as u64, mcycle, &mut dma)
                .expect("register store");
        }

        fn r(&mut self, offset: u64) -> u32 {
            self.core.mmio_read(offset, 4).expect("register load") as u32
        }

        fn v(&self) -> &VirtioConsole {
            self.core.virtio().unwrap()
        }

        fn probe(&mut self) {
            assert_eq!(self.r(reg::MAGIC), MAGIC);
            assert_eq!(self.r(reg::VERSION), 2);
            assert_eq!(self.r(reg::DEVICE_ID), 3);
            self.w(reg::STATUS, 0);
            self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
            self.w(reg::DEVICE_FEATURES_SEL, 1);
            assert_eq!(self.r(reg::DEVICE_FEATURES), 1);
            self.w(reg::DEVICE_FEATURES_SEL, 0);
            assert_eq!(self.r(reg::DEVICE_FEATURES), 2);
            self.w(reg::DRIVER_FEATURES_SEL, 1);
            self.w(reg::DRIVER_FEATURES, 1);
            self.w(reg::DRIVER_FEATURES_SEL, 0);
            self.w(reg::DRIVER_FEATURES, 2);
            self.w(
                reg::STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            );
            assert_ne!(self.r(reg::STATUS) & status::FEATURES_OK, 0);
            assert_eq!(
                self.core.mmio_read(reg::CONFIG + 4, 4),
                Some(2),
                "max_nr_ports"
            );
            for q in 0..QUEUES {
                let (desc, driver, device) = ring(q);
                self.w(reg::QUEUE_SEL, q as u32);
                assert_eq!(self.r(reg::QUEUE_READY), 0);
                assert_eq!(self.r(reg::QUEUE_NUM_MAX), QUEUE_NUM_MAX);
                self.w(reg::QUEUE_NUM, NUM);
                self.w(reg::QUEUE_DESC_LOW, desc as u32);
                self.w(reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
                self.w(reg::QUEUE_DRIVER_LOW, driver as u32);
                self.w(reg::QUEUE_DRIVER_HIGH, 0);
                self.w(reg::QUEUE_DEVICE_LOW, device as u32);
                self.w(reg::QUEUE_DEVICE_HIGH, 0);
                self.w(reg::QUEUE_READY, 1);
                assert_eq!(self.r(reg::QUEUE_READY), 1);
            }
            self.w(reg::QUEUE_SEL, QUEUES as u32);
            assert_eq!(self.r(reg::QUEUE_NUM_MAX), 0);
            self.w(
                reg::STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
            );
        }

        fn buffer(&mut self, len: u32) -> u64 {
            let at = self.next_buf;
            self.next_buf += (len as u64).next_multiple_of(64);
            at
        }

        /// Posts a chain of buffers (address, length, writable) on queue `q`; returns
        /// the head.
        fn post(&mut self, q: usize, buffers: &[(u64, u32, bool)]) -> u16 {
            let (desc, driver, _) = ring(q);
            let head = self.next_desc[q];
            for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
                let index = (head + i as u16) % NUM as u16;
                let mut d = [0u8; 16];
                d[..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                let last = i + 1 == buffers.len();
                let flags =
                    if last { 0 } else { DESC_NEXT } | if writable { DESC_WRITE } else { 0 };
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&((index + 1) % NUM as u16).to_le_bytes());
                self.ram
                    .write_bytes(desc - RAM_BASE + 16 * index as u64, &d);
            }
            self.next_desc[q] = (head + buffers.len() as u16) % NUM as u16;
            let slot = self.avail_idx[q] % NUM as u16;
            self.ram
                .write_bytes(driver - RAM_BASE + 4 + 2 * slot as u64, &head.to_le_bytes());
            self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
            self.ram
                .write_bytes(driver - RAM_BASE + 2, &self.avail_idx[q].to_le_bytes());
            head
        }

        fn send(&mut self, q: usize, bytes: &[u8]) {
            let at = self.buffer(bytes.len() as u32);
            self.ram.write_bytes(at - RAM_BASE, bytes);
            self.post(q, &[(at, bytes.len() as u32, false)]);
            self.w(reg::QUEUE_NOTIFY, q as u32);
        }

        /// Used elements of queue `q` not seen yet: (head, length).
        fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
            let (_, _, device) = ring(q);
            let off = device - RAM_BASE;
            let idx = u16::from_le_bytes(
                self.ram.bytes()[off as usize + 2..][..2]
                    .try_into()
                    .unwrap(),
            );
            let mut out = Vec::new();
            while self.seen_used[q] != idx {
                let slot = (self.seen_used[q] % NUM as u16) as u64;
                let e = &self.ram.bytes()[(off + 4 + 8 * slot) as usize..][..8];
                out.push((
                    u32::from_le_bytes(e[..4].try_into().unwrap()),
                    u32::from_le_bytes(e[4..].try_into().unwrap()),
                ));
                self.seen_used[q] = self.seen_used[q].wrapping_add(1);
            }
            out
        }

        fn read(&self, pa: u64, len: u32) -> Vec<u8> {
            self.ram.bytes()[(pa - RAM_BASE) as usize..][..len as usize].to_vec()
        }

        fn control(&mut self, id: u32, ev: u16, value: u16) {
            self.send(CONTROL_TX, &control_message(id, ev, value, &[]));
            assert_eq!(self.used(CONTROL_TX).len(), 1, "control message consumed");
        }

        fn deliver(&mut self, mcycle: u64) {
            self.core.deliver_due(mcycle);
            let mut dma = Dma {
                ram: &mut self.ram,
                log: &mut self.log,
            };
            self.core.pump(mcycle, &mut dma);
        }

        fn state(&self) -> Vec<u8> {
            let mut out = Vec::new();
            self.core.save_state(&mut out);
            out
        }
    }

    fn frame(tag: u64, body: &[u8]) -> Vec<u8> {
        let mut f = tag.to_le_bytes().to_vec();
        f.extend_from_slice(&(body.len() as u64).to_le_bytes());
        f.extend_from_slice(body);
        f
    }

    /// A driver past the handshake, port 1 named, announced open and opened.
    fn connected() -> (Driver, Vec<(u64, u32)>) {
        let mut d = Driver::new();
        d.probe();
        let control: Vec<(u64, u32)> = (0..4).map(|_| (d.buffer(64), 64)).collect();
        for &(at, len) in &control {
            d.post(CONTROL_RX, &[(at, len, true)]);
        }
        d.w(reg::QUEUE_NOTIFY, CONTROL_RX as u32);
        assert!(d.used(CONTROL_RX).is_empty());
        d.control(u32::MAX, event::DEVICE_READY, 1);
        let got = d.used(CONTROL_RX);
        assert_eq!(got, [(0, 8)]);
        assert_eq!(
            d.read(control[0].0, 8),
            control_message(1, event::DEVICE_ADD, 0, &[])
        );
        d.control(1, event::PORT_READY, 1);
        let got = d.used(CONTROL_RX);
        assert_eq!(got, [(1, 8 + PORT_NAME.len() as u32), (2, 8)]);
        assert_eq!(
            d.read(control[1].0, 8 + PORT_NAME.len() as u32),
            control_message(1, event::PORT_NAME, 0, b"cmbuild.offload")
        );
        assert_eq!(
            d.read(control[2].0, 8),
            control_message(1, event::PORT_OPEN, 1, &[])
        );
        assert!(d.v().interrupt_pending());
        let pending = d.r(reg::INTERRUPT_STATUS);
        d.w(reg::INTERRUPT_ACK, pending);
        assert!(!d.core.interrupt_pending());
        d.control(1, event::PORT_OPEN, 1);
        assert!(d.v().port_open());
        (d, control)
    }

    #[test]
    fn frames_go_to_the_timing_core_and_answers_fill_the_posted_buffers() {
        let (mut d, _) = connected();
        // A frame in two pieces, the header split across two buffers of one chain.
        let f = frame(5, b"job");
        let (a, b) = (d.buffer(10), d.buffer(9));
        d.ram.write_bytes(a - RAM_BASE, &f[..10]);
        d.ram.write_bytes(b - RAM_BASE, &f[10..]);
        d.post(PORT1_TX, &[(a, 10, false), (b, 9, false)]);
        assert!(d.core.request(5).is_none());
        d.w(reg::QUEUE_NOTIFY, PORT1_TX as u32);
        let notify_at = d.mcycle;
        assert_eq!(d.used(PORT1_TX), [(0, 0)]);
        let r = d.core.request(5).expect("submitted");
        assert_eq!(
            (r.request.as_slice(), r.submitted_at),
            (&b"job"[..], notify_at + 1)
        );
        assert_eq!(d.core.submitted.pop_front(), Some(5));
        // Nothing is received before the answer's cycle.
        let (r1, r2) = (d.buffer(10), d.buffer(64));
        d.post(PORT1_RX, &[(r1, 10, true)]);
        d.post(PORT1_RX, &[(r2, 64, true)]);
        d.w(reg::QUEUE_NOTIFY, PORT1_RX as u32);
        let at = d.core.earliest(5).unwrap() + 7;
        d.core
            .answer(
                5,
                Answer {
                    visible_at: at,
                    response: b"result".to_vec(),
                    record: [1; 32],
                },
                d.mcycle,
            )
            .unwrap();
        d.deliver(at - 1);
        assert!(d.used(PORT1_RX).is_empty());
        d.log.clear();
        d.deliver(at);
        // The frame fills the first buffer and goes on in the second.
        let expected = frame(5, b"result");
        assert_eq!(d.used(PORT1_RX), [(0, 10), (1, 12)]);
        assert_eq!(d.read(r1, 10), expected[..10]);
        assert_eq!(d.read(r2, 12), expected[10..]);
        assert!(d.core.interrupt_pending());
        // Every byte written was logged for the hart.
        let logged: u64 = d.log.iter().map(|&(_, len)| len).sum();
        assert!(logged >= 22 + 2 * 10, "{:?}", d.log);
        assert!(d.log.iter().any(|&(off, _)| off == r1 - RAM_BASE));
        assert_eq!(d.core.delivered(), 1);

        // A tag in use and an oversized frame are answered at once with empty frames;
        // the frame after them is taken normally.
        d.send(PORT1_TX, &frame(6, b"a"));
        d.send(PORT1_TX, &frame(6, b"b"));
        let mut big = frame(8, b"");
        big[8..16].copy_from_slice(&(MAX_REQUEST + 1).to_le_bytes());
        d.send(PORT1_TX, &big);
        let body = vec![0u8; MAX_REQUEST as usize + 1];
        d.send(PORT1_TX, &body);
        d.send(PORT1_TX, &frame(9, b"c"));
        assert!(d.core.request(6).is_some() && d.core.request(9).is_some());
        assert!(d.core.request(8).is_none());
        let r3 = d.buffer(64);
        d.post(PORT1_RX, &[(r3, 64, true)]);
        d.w(reg::QUEUE_NOTIFY, PORT1_RX as u32);
        assert_eq!(d.used(PORT1_RX), [(2, 32)]);
        let mut refusals = frame(6, b"");
        refusals.extend(frame(8, b""));
        assert_eq!(d.read(r3, 32), refusals);

        // The state round-trips, and every truncation is refused.
        let state = d.state();
        let mut c = OffloadChannel::new(1);
        let mut r = Reader::new(&state);
        c.load_state(&mut r).unwrap();
        assert!(r.remaining().is_empty());
        let mut again = Vec::new();
        c.save_state(&mut again);
        assert_eq!(again, state);
        assert!(c.virtio == d.core.virtio);
        for len in 0..state.len() {
            let mut c = OffloadChannel::new(1);
            assert!(
                c.load_state(&mut Reader::new(&state[..len])).is_err(),
                "{len}"
            );
        }
    }

    #[test]
    fn the_stream_waits_for_buffers_and_an_open_port() {
        let (mut d, _) = connected();
        d.control(1, event::PORT_OPEN, 0);
        for tag in 1..=3u64 {
            d.send(PORT1_TX, &frame(tag, &[tag as u8; 3]));
        }
        let at = d.core.earliest(3).unwrap();
        for tag in 1..=3 {
            d.core
                .answer(
                    tag,
                    Answer {
                        visible_at: at,
                        response: vec![tag as u8; 100],
                        record: [0; 32],
                    },
                    d.mcycle,
                )
                .unwrap();
        }
        let r1 = d.buffer(50);
        d.post(PORT1_RX, &[(r1, 50, true)]);
        d.deliver(at);
        // Closed: nothing moves.
        assert!(d.used(PORT1_RX).is_empty());
        d.control(1, event::PORT_OPEN, 1);
        assert_eq!(d.used(PORT1_RX), [(0, 50)]);
        let mut stream = Vec::new();
        stream.extend(d.read(r1, 50));
        // Three frames of 116 bytes, through buffers of 50: the rest waits for them.
        let mut head = 1;
        while stream.len() < 3 * 116 {
            let r = d.buffer(50);
            d.post(PORT1_RX, &[(r, 50, true)]);
            d.w(reg::QUEUE_NOTIFY, PORT1_RX as u32);
            let used = d.used(PORT1_RX);
            assert_eq!(used.len(), 1);
            assert_eq!(used[0].0, head);
            head = (head + 1) % NUM;
            stream.extend(d.read(r, used[0].1));
        }
        let mut expected = Vec::new();
        for tag in 1..=3u64 {
            expected.extend(frame(tag, &[tag as u8; 100]));
        }
        assert_eq!(stream, expected);
        // Every tag is free again.
        assert_eq!(d.core.completions().count(), 0);
        assert!(d.core.enqueue(1, vec![], d.mcycle));
    }

    #[test]
    fn bad_features_and_a_reset() {
        let mut d = Driver::new();
        d.w(reg::DRIVER_FEATURES_SEL, 0);
        d.w(reg::DRIVER_FEATURES, 2 | 1); // VIRTIO_CONSOLE_F_SIZE is not offered
        d.w(reg::DRIVER_FEATURES_SEL, 1);
        d.w(reg::DRIVER_FEATURES, 1);
        d.w(reg::STATUS, 3 | status::FEATURES_OK);
        assert_eq!(d.r(reg::STATUS), 3);
        d.w(reg::STATUS, 0);
        assert_eq!(d.state(), Driver::new().state());
        // Wrong sizes fault; the configuration space takes bytes.
        assert_eq!(d.core.mmio_read(reg::MAGIC, 8), None);
        assert_eq!(d.core.mmio_read(reg::MAGIC + 1, 1), None);
        assert_eq!(d.core.mmio_read(reg::CONFIG + 4, 1), Some(2));
        assert_eq!(d.core.mmio_read(reg::CONFIG + 4, 2), Some(2));
    }

    #[test]
    fn hostile_rings_set_needs_reset_and_never_panic_nor_loop() {
        // A chain that loops on itself.
        let (mut d, _) = connected();
        let (desc, _, _) = ring(PORT1_TX);
        let a = d.buffer(16);
        let head = d.post(PORT1_TX, &[(a, 16, false)]);
        let mut loop_desc = [0u8; 16];
        loop_desc[..8].copy_from_slice(&a.to_le_bytes());
        loop_desc[8..12].copy_from_slice(&16u32.to_le_bytes());
        loop_desc[12..14].copy_from_slice(&DESC_NEXT.to_le_bytes());
        loop_desc[14..16].copy_from_slice(&head.to_le_bytes());
        d.ram
            .write_bytes(desc - RAM_BASE + 16 * head as u64, &loop_desc);
        d.w(reg::QUEUE_NOTIFY, PORT1_TX as u32);
        assert_ne!(d.r(reg::STATUS) & status::NEEDS_RESET, 0);
        // A broken device does nothing until reset.
        d.send(PORT1_TX, &frame(1, b"x"));
        assert!(d.core.request(1).is_none());
        d.w(reg::STATUS, 0);
        assert_eq!(d.r(reg::STATUS), 0);

        // Buffers out of RAM, an avail index far ahead, indirect descriptors.
        for case in 0..3 {
            let (mut d, _) = connected();
            match case {
                0 => {
                    d.post(PORT1_TX, &[(RAM_BASE + RAM - 4, 16, false)]);
                }
                1 => {
                    let (_, driver, _) = ring(PORT1_TX);
                    d.ram
                        .write_bytes(driver - RAM_BASE + 2, &100u16.to_le_bytes());
                }
                _ => {
                    let a = d.buffer(16);
                    let head = d.post(PORT1_TX, &[(a, 16, false)]);
                    d.ram.write_bytes(
                        desc - RAM_BASE + 16 * head as u64 + 12,
                        &DESC_INDIRECT.to_le_bytes(),
                    );
                }
            }
            d.w(reg::QUEUE_NOTIFY, PORT1_TX as u32);
            assert_ne!(d.r(reg::STATUS) & status::NEEDS_RESET, 0, "case {case}");
        }

        // Random rings and registers: whatever happens, every call returns.
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let (mut d, _) = connected();
            let (desc, _, _) = ring(0);
            let rings = 0x1000 * QUEUES as u64;
            for _ in 0..64 {
                let at = desc - RAM_BASE + next() % rings;
                let value = next();
                // Descriptor addresses mostly inside RAM.
                let value = if next() % 2 == 0 {
                    RAM_BASE + value % RAM
                } else {
                    value
                };
                d.ram.write_bytes(at & !7, &value.to_le_bytes());
            }
            for _ in 0..32 {
                let offset = (next() % 0x110) & !3;
                let value = next() as u32;
                if offset == reg::STATUS && round % 2 == 0 {
                    continue;
                }
                let offset = if next() % 3 == 0 {
                    reg::QUEUE_NOTIFY
                } else {
                    offset
                };
                d.w(
                    offset,
                    if offset == reg::QUEUE_NOTIFY {
                        value % 8
                    } else {
                        value
                    },
                );
            }
            let state = d.state();
            let mut c = OffloadChannel::new(1);
            c.load_state(&mut Reader::new(&state)).unwrap();
            assert!(c.virtio == d.core.virtio, "round {round}");
        }
    }

    #[test]
    fn too_many_jobs_are_refused_not_lost() {
        let (mut d, _) = connected();
        for tag in 0..MAX_JOBS as u64 + 1 {
            d.send(PORT1_TX, &frame(tag, b"j"));
            d.used(PORT1_TX);
        }
        assert_eq!(d.core.unanswered().count(), MAX_JOBS);
        let r = d.buffer(64);
        d.post(PORT1_RX, &[(r, 64, true)]);
        d.w(reg::QUEUE_NOTIFY, PORT1_RX as u32);
        assert_eq!(d.used(PORT1_RX), [(0, 16)]);
        assert_eq!(d.read(r, 16), frame(MAX_JOBS as u64, b""));
    }

    #[test]
    fn corrupted_state_is_refused_or_loads_canonically() {
        let (mut d, _) = connected();
        d.send(PORT1_TX, &frame(3, b"abc"));
        d.send(PORT1_TX, &frame(4, b"x")[..12]);
        let state = d.state();
        for at in 0..state.len() {
            for bit in [0, 3, 7] {
                let mut bytes = state.clone();
                bytes[at] ^= 1 << bit;
                let mut c = OffloadChannel::new(1);
                let mut r = Reader::new(&bytes);
                if c.load_state(&mut r).is_ok() && r.remaining().is_empty() {
                    let mut again = Vec::new();
                    c.save_state(&mut again);
                    assert_eq!(again, bytes, "byte {at} bit {bit}");
                }
            }
        }
    }
}
