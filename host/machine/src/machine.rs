//! The machine: a hart and its board, built from a configuration of plain bytes, run
//! until it halts or reaches an `mcycle` limit.
//!
//! # Boot
//! `--ram-image` and `--bios` load at `RAM_BASE`, `--kernel` at `RAM_BASE + 2 MiB`, the
//! initrd at the top of RAM (page aligned), the device tree at [`board::DTB_BASE`]. The
//! hart starts in M-mode at `RAM_BASE` (or at the kernel when only a kernel is given) with
//! `a0 = 0` (hart id) and `a1` = the DTB address.
//!
//! # State hash (`cmvm-sha256-v1`)
//! The root is [`merkle::combine_leaves`] over, in this order: the state leaf
//! `SHA-256(canonical processor and device state, see [`Machine::save_state`])`, then the
//! page-tree root ([`merkle`]) of each memory range in address order: the device-tree ROM
//! (the [`board::DTB_SIZE`] bytes at [`board::DTB_BASE`]: the blob, then zeros; see
//! [`merkle::range_root_of_length`]), RAM, then each flash drive. The ROM is in the hash
//! because it is guest-visible state (it carries the bootargs, the initrd location and the
//! rng seed); it never changes, so only RAM and the flash drives have trees updated
//! incrementally from the dirty-page bitmaps.

use sha2::{Digest, Sha256};

use crate::board::{self, DTB_BASE, KERNEL_OFFSET, RAM_BASE};
use crate::bus::{Bus, FlashDrive};
pub use crate::devices::offload::Transport as OffloadTransport;
use crate::devices::offload::{Answer, OffloadChannel, OffloadError};
use crate::devices::Device;
use crate::fdt::{self, BoardDescription};
use crate::hart::{Hart, Stop};
use crate::memory::MemRange;
use crate::merkle::{self, PageTree};
use crate::state::{put_u64, put_u8, Reader, StateError};

/// RAM and each flash drive are smaller than this (64 GiB): a bound on what a
/// configuration or a snapshot can make the host allocate.
pub const MEMORY_LIMIT: u64 = 64 << 30;

/// Name and version of the state hash recipe; part of every published hash.
pub const HASH_SCHEME: &str = "cmvm-sha256-v1";

/// A flash drive to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashConfig {
    /// Label (`label:NAME`).
    pub label: String,
    /// The drive's initial contents.
    pub image: Vec<u8>,
    /// Whether the caller will write the final contents back to the host file.
    pub shared: bool,
}

/// Everything a run starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// Bytes of RAM (a multiple of 4 KiB).
    pub ram_length: u64,
    /// A raw image loaded at `RAM_BASE` (bare-metal programs).
    pub ram_image: Option<Vec<u8>>,
    /// Firmware loaded at `RAM_BASE` (OpenSBI `fw_jump.bin`).
    pub bios: Option<Vec<u8>>,
    /// Kernel loaded at `RAM_BASE + 2 MiB`.
    pub kernel: Option<Vec<u8>>,
    /// Initrd, loaded at the top of RAM.
    pub initrd: Option<Vec<u8>>,
    /// Kernel command line.
    pub bootargs: String,
    /// Flash drives, placed above RAM in this order.
    pub flash_drives: Vec<FlashConfig>,
    /// The offload channel (`docs/parallel-builds.md`), a board option; `None` (the
    /// default) leaves the board, its device tree and every state hash as they were.
    pub offload: Option<OffloadConfig>,
}

/// The offload channel of a board that has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadConfig {
    /// Cycles from a request's submission to the earliest `mcycle` its response may be
    /// visible at (at least 1).
    pub min_latency: u64,
    /// How the guest reaches it: the register interface or a virtio console.
    pub transport: OffloadTransport,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            ram_length: 128 << 20,
            ram_image: None,
            bios: None,
            kernel: None,
            initrd: None,
            bootargs: String::new(),
            flash_drives: Vec::new(),
            offload: None,
        }
    }
}

/// Why a machine could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MachineError {
    /// the page trees given do not have the shape of this machine's memory
    #[error("the page trees given do not have the shape of this machine's memory")]
    PageTreeShape,
    /// RAM length {0} is not a nonzero multiple of 4096 below 64 GiB
    #[error("RAM length {0} is not a nonzero multiple of 4096 below 64 GiB")]
    BadRamLength(u64),
    /// {what} ({len} bytes) does not fit in RAM at offset {offset:#x}
    #[error("{what} ({len} bytes) does not fit in RAM at offset {offset:#x}")]
    DoesNotFit {
        /// Which image.
        what: &'static str,
        /// Its length.
        len: u64,
        /// Where it should go.
        offset: u64,
    },
    /// --ram-image and --bios both load at the start of RAM; give one
    #[error("--ram-image and --bios both load at the start of RAM; give one")]
    RamImageAndBios,
    /// the initrd overlaps the kernel or firmware
    #[error("the initrd overlaps the kernel or firmware")]
    InitrdOverlaps,
    /// the generated device tree ({0} bytes) is larger than its 1 MiB window
    #[error("the generated device tree ({0} bytes) is larger than its 1 MiB window")]
    DtbTooLarge(usize),
    /// flash drive label {0:?} is empty or used twice
    #[error("flash drive label {0:?} is empty or used twice")]
    BadFlashLabel(String),
    /// flash drive {0:?} is 64 GiB or larger
    #[error("flash drive {0:?} is 64 GiB or larger")]
    FlashTooLarge(String),
    /// the host cannot allocate {0} bytes of RAM
    #[error("the host cannot allocate {0} bytes of RAM")]
    OutOfMemory(u64),
    /// flash drive {0}'s memory cannot be replaced by memory or a page tree of another range
    #[error(
        "flash drive {0}'s memory cannot be replaced by memory or a page tree of another range"
    )]
    DriveReplacement(usize),
    /// the offload channel's min_latency must be at least 1
    #[error("the offload channel's min_latency must be at least 1")]
    BadOffloadLatency,
}

/// Why [`Machine::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    /// The guest halted with this exit code.
    Halted(u64),
    /// The guest yielded to the host with this data (HTIF device 2, command 0), at the
    /// `mcycle` right after its storing instruction; running on continues the guest.
    Yielded(u64),
    /// `mcycle` reached the limit.
    MaxMcycle,
    /// The guest submitted the offload request with this tag, at the `mcycle` right after
    /// its storing instruction ([`OffloadChannel::request`] has it); running on continues
    /// the guest. The host may answer ([`Machine::offload_answer`]) now or later.
    OffloadRequest(u64),
    /// The guest reached the last cycle before the earliest visible response of the
    /// unanswered offload request with this tag: it cannot go on until the host answers
    /// (running again without an answer returns this again at once).
    OffloadWaiting(u64),
}

/// A machine: the hart, the board and the page trees of the state hash.
#[derive(Debug)]
pub struct Machine {
    /// The hart.
    pub hart: Hart,
    /// Memory and devices.
    pub bus: Bus,
    /// Page trees of RAM and each flash drive, built on the first hash.
    trees: Option<Vec<PageTree>>,
    /// With no trees yet: where the first hash may find the trees of the state the
    /// machine was in at [`Machine::count_writes_from_here`] (the dirty bits hold every page
    /// written since).
    late_trees: Option<Pending>,
}

/// Where a machine made before the page trees of its state were ready finds them at its
/// first hash ([`Machine::count_writes_from_here`]): `None` while they are not ready (or
/// never will be).
pub type LateTrees = Box<dyn Fn() -> Option<Vec<PageTree>> + Send>;

/// A [`LateTrees`] held by a machine.
struct Pending(LateTrees);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl Machine {
    /// Builds a machine at reset from `config`.
    pub fn new(config: &MachineConfig) -> Result<Self, MachineError> {
        Self::build(config, Vec::new(), rng_seed(config))
    }

    /// [`Machine::new`], taking the flash drive images over instead of copying them (a
    /// root image is gigabytes).
    pub fn from_config(mut config: MachineConfig) -> Result<Self, MachineError> {
        // The seed covers the images: take it while they are still in the config.
        let seed = rng_seed(&config);
        let images = config
            .flash_drives
            .iter_mut()
            .map(|f| std::mem::take(&mut f.image))
            .collect();
        Self::build(&config, images, seed)
    }

    /// Builds the machine; `images`, if not empty, are the flash drives' images (those in
    /// `config` are then empty), and `seed` is [`rng_seed`] of the whole configuration.
    fn build(
        config: &MachineConfig,
        mut images: Vec<Vec<u8>>,
        seed: [u8; 32],
    ) -> Result<Self, MachineError> {
        let ram_length = config.ram_length;
        if ram_length == 0 || ram_length % 4096 != 0 || ram_length >= MEMORY_LIMIT {
            return Err(MachineError::BadRamLength(ram_length));
        }
        if config.ram_image.is_some() && config.bios.is_some() {
            return Err(MachineError::RamImageAndBios);
        }
        if config.offload.is_some_and(|o| o.min_latency == 0) {
            return Err(MachineError::BadOffloadLatency);
        }
        let mut labels = std::collections::BTreeSet::new();
        for f in &config.flash_drives {
            if f.label.is_empty() || !labels.insert(f.label.as_str()) {
                return Err(MachineError::BadFlashLabel(f.label.clone()));
            }
        }
        for (i, f) in config.flash_drives.iter().enumerate() {
            let len = images.get(i).map_or(f.image.len(), Vec::len) as u64;
            if len >= MEMORY_LIMIT {
                return Err(MachineError::FlashTooLarge(f.label.clone()));
            }
        }
        let mut ram =
            MemRange::try_new(RAM_BASE, ram_length).ok_or(MachineError::OutOfMemory(ram_length))?;
        let mut load = |what: &'static str, bytes: &[u8], offset: u64| {
            if ram.write_bytes(offset, bytes) {
                Ok(offset..offset + bytes.len() as u64)
            } else {
                Err(MachineError::DoesNotFit {
                    what,
                    len: bytes.len() as u64,
                    offset,
                })
            }
        };
        let mut occupied = Vec::new();
        if let Some(image) = &config.ram_image {
            occupied.push(load("the RAM image", image, 0)?);
        }
        if let Some(bios) = &config.bios {
            occupied.push(load("the firmware", bios, 0)?);
        }
        if let Some(kernel) = &config.kernel {
            occupied.push(load("the kernel", kernel, KERNEL_OFFSET)?);
        }
        let initrd = match &config.initrd {
            Some(initrd) => {
                let len = initrd.len() as u64;
                let offset = ram_length
                    .checked_sub(len)
                    .ok_or(MachineError::DoesNotFit {
                        what: "the initrd",
                        len,
                        offset: 0,
                    })?
                    & !0xfff;
                let range = load("the initrd", initrd, offset)?;
                if occupied
                    .iter()
                    .any(|r| r.start < range.end && range.start < r.end)
                {
                    return Err(MachineError::InitrdOverlaps);
                }
                Some((RAM_BASE + range.start, RAM_BASE + range.end))
            }
            None => None,
        };
        let owned = !images.is_empty();
        let lengths: Vec<u64> = if owned {
            images.iter().map(|i| i.len() as u64).collect()
        } else {
            config
                .flash_drives
                .iter()
                .map(|f| f.image.len() as u64)
                .collect()
        };
        let placed = fdt::place_flash_drives(ram_length, &lengths);
        let flash: Vec<FlashDrive> = config
            .flash_drives
            .iter()
            .zip(&placed)
            .enumerate()
            .map(|(i, (f, &(start, length)))| {
                let mem = if owned {
                    MemRange::from_vec(start, std::mem::take(&mut images[i]), length)
                } else {
                    let mut mem = MemRange::new(start, length);
                    mem.fill_fresh(&f.image);
                    mem
                };
                FlashDrive {
                    label: f.label.clone(),
                    shared: f.shared,
                    image_length: lengths[i],
                    mem,
                }
            })
            .collect();
        let desc = BoardDescription {
            ram_length,
            flash_drives: flash
                .iter()
                .map(|f| fdt::FlashDrive {
                    label: f.label.clone(),
                    start: f.mem.start,
                    length: f.mem.len(),
                })
                .collect(),
            bootargs: config.bootargs.clone(),
            initrd,
            rng_seed: seed,
            offload_channel: config.offload.map(|o| o.transport),
        };
        let dtb = fdt::board_device_tree(&desc);
        if dtb.len() as u64 > board::DTB_SIZE {
            return Err(MachineError::DtbTooLarge(dtb.len()));
        }
        let mut hart = Hart::new(ram_length);
        if config.kernel.is_some() && config.bios.is_none() && config.ram_image.is_none() {
            hart.pc = RAM_BASE + KERNEL_OFFSET;
        }
        hart.x[10] = 0;
        hart.x[11] = DTB_BASE;
        hart.flush_caches();
        let mut bus = Bus::new(ram, flash, dtb);
        bus.offload = config
            .offload
            .map(|o| OffloadChannel::with_transport(o.min_latency, o.transport));
        Ok(Self {
            hart,
            bus,
            trees: None,
            late_trees: None,
        })
    }

    /// A machine from its parts (snapshot loading).
    pub(crate) fn from_parts(hart: Hart, bus: Bus) -> Self {
        Self {
            hart,
            bus,
            trees: None,
            late_trees: None,
        }
    }

    /// Runs until the guest halts or yields, or `mcycle` reaches `max_mcycle`.
    pub fn run(&mut self, max_mcycle: u64) -> Break {
        match self.hart.run(&mut self.bus, max_mcycle) {
            Stop::Halted => Break::Halted(self.bus.devices.htif.halt.unwrap_or(0)),
            Stop::Yielded => Break::Yielded(self.bus.devices.htif.yielded.take().unwrap_or(0)),
            Stop::Limit => Break::MaxMcycle,
            Stop::OffloadRequest(tag) => Break::OffloadRequest(tag),
            Stop::OffloadWaiting(tag) => Break::OffloadWaiting(tag),
        }
    }

    /// The offload channel, on a board that has one.
    pub fn offload(&self) -> Option<&OffloadChannel> {
        self.bus.offload.as_ref()
    }

    /// The host's answer to offload request `tag`: visible to the guest at
    /// `answer.visible_at` exactly, whenever this is called (see `devices/offload.rs`).
    pub fn offload_answer(&mut self, tag: u64, answer: Answer) -> Result<(), OffloadError> {
        let mcycle = self.hart.mcycle;
        self.bus
            .offload
            .as_mut()
            .ok_or(OffloadError::NoChannel)?
            .answer(tag, answer, mcycle)?;
        self.bus.pump_offload(mcycle);
        self.hart.sync_device_writes(&mut self.bus);
        Ok(())
    }

    /// The host's promise that offload request `tag` has no answer before `not_before`
    /// (it may run that far without the answer; see `devices/offload.rs`). Changes no state.
    pub fn offload_promise(&mut self, tag: u64, not_before: u64) -> Result<(), OffloadError> {
        self.bus
            .offload
            .as_mut()
            .ok_or(OffloadError::NoChannel)?
            .promise(tag, not_before)
    }

    /// The break state without running (a halted machine stays halted).
    pub fn halted(&self) -> Option<u64> {
        self.bus.devices.htif.halt
    }

    /// `mcycle`.
    pub fn mcycle(&self) -> u64 {
        self.hart.mcycle
    }

    /// Cycles the hart spent asleep in WFI since this machine was built or loaded (not
    /// state: see [`Hart::idle_cycles`]).
    pub fn idle_cycles(&self) -> u64 {
        self.hart.idle_cycles
    }

    /// Guest stores to flash drives since this machine was built or loaded (not state:
    /// see [`Bus::flash_stores`]).
    pub fn drive_stores(&self) -> u64 {
        self.bus.flash_stores
    }

    /// Takes the console bytes written since the last call.
    pub fn drain_console(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bus.console)
    }

    /// Appends the canonical encoding of the processor and device state: the hart, then
    /// each device in the order of [`board::DEVICES`] (CLINT, HTIF, PLIC, UART), each as
    /// its [`crate::devices::Device::save_state`] documents, then, on a board with the
    /// offload channel only, the channel's state (which starts with
    /// [`crate::devices::offload::STATE_MAGIC`]). Memory is not included (the page trees cover it).
    pub fn save_state(&self, out: &mut Vec<u8>) {
        self.hart.save_state(out);
        for slot in board::DEVICES {
            self.bus.devices.get(slot.id).save_state(out);
        }
        if let Some(channel) = &self.bus.offload {
            channel.save_state(out);
        }
    }

    /// Restores what [`Machine::save_state`] wrote; the whole input must be consumed. The
    /// state says whether the board has the offload channel (a channel's answers not yet
    /// visible are dropped: the host gives them again).
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(bytes);
        self.hart.load_state(&mut r)?;
        for slot in board::DEVICES {
            self.bus.devices.get_mut(slot.id).load_state(&mut r)?;
        }
        self.bus.offload = if r.remaining().is_empty() {
            None
        } else {
            let mut channel = OffloadChannel::new(1);
            Device::load_state(&mut channel, &mut r)?;
            Some(channel)
        };
        if !r.remaining().is_empty() {
            return Err(StateError::Invalid("trailing bytes after the device state"));
        }
        Ok(())
    }

    /// After the caller replaced memory contents wholesale (snapshot load): drop the
    /// hart's caches and rebuild the page trees on the next hash.
    pub fn memory_replaced(&mut self) {
        self.hart.flush_caches();
        self.trees = None;
        self.late_trees = None;
    }

    /// The page trees of RAM and each flash drive, brought up to date (the dirty pages
    /// hashed, or everything on the first call), for [`Machine::adopt_page_trees`] of
    /// another machine in the same state.
    pub fn page_trees(&mut self) -> Vec<PageTree> {
        self.hash_leaves();
        self.trees.clone().expect("built by hash_leaves")
    }

    /// Takes `trees` as the page trees of this machine's memory: they must be
    /// [`Machine::page_trees`] of a machine whose RAM and drives held exactly what this one
    /// holds now (another instance of the same snapshot, say), and only the pages written
    /// from now on are hashed again. Trees of another shape are refused; trees of other
    /// contents would make every later hash wrong, a promise the caller keeps
    /// ([`Machine::root_hash_from_scratch`] checks it).
    pub fn adopt_page_trees(&mut self, trees: Vec<PageTree>) -> Result<(), MachineError> {
        self.check_tree_shape(&trees)?;
        let ranges = self.memory_ranges_mut();
        for mem in ranges {
            mem.clear_dirty();
        }
        self.hart.forget_fast_stores();
        self.trees = Some(trees);
        self.late_trees = None;
        Ok(())
    }

    /// Refuses trees that are not one per memory range, each of its range's length.
    fn check_tree_shape(&self, trees: &[PageTree]) -> Result<(), MachineError> {
        let lengths =
            std::iter::once(self.bus.ram.len()).chain(self.bus.flash.iter().map(|f| f.mem.len()));
        if trees.len() != 1 + self.bus.flash.len()
            || trees
                .iter()
                .zip(lengths)
                .any(|(t, length)| t.length() != length)
        {
            return Err(MachineError::PageTreeShape);
        }
        Ok(())
    }

    /// For a machine whose page trees are not at hand yet (another thread is building
    /// those of the state it is in now): clears the dirty bits, so that from now on they
    /// name the pages written since this state, and its first hash takes the trees from
    /// `late` if they are ready by then (the same promise as [`Machine::adopt_page_trees`]'s;
    /// trees of another shape are not taken) and rehashes only those pages, instead of
    /// all its memory. Otherwise that hash builds the trees from scratch, as always.
    pub fn count_writes_from_here(&mut self, late: LateTrees) {
        if self.trees.is_some() {
            return;
        }
        for mem in self.memory_ranges_mut() {
            mem.clear_dirty();
        }
        self.hart.forget_fast_stores();
        self.late_trees = Some(Pending(late));
    }

    /// Puts `mem` in place of flash drive `index`'s memory: host memory over the same range
    /// whose contents `tree` describes ([`PageTree::build`] of its bytes), such as a
    /// copy-on-write mapping of an image that many machines share. For a drive the host
    /// fills before the guest runs on (a sibling's scratch drive): nothing is copied, and
    /// the drive's pages are not hashed again unless the guest writes them. The drive's old
    /// contents are gone. `tree` is a promise like [`Machine::adopt_page_trees`]'s
    /// ([`Machine::root_hash_from_scratch`] checks it); it also replaces the drive's tree in
    /// trees that come later ([`Machine::count_writes_from_here`]).
    pub fn replace_drive(
        &mut self,
        index: usize,
        mut mem: MemRange,
        tree: PageTree,
    ) -> Result<(), MachineError> {
        let drive = self
            .bus
            .flash
            .get_mut(index)
            .ok_or(MachineError::DriveReplacement(index))?;
        if mem.start != drive.mem.start
            || mem.len() != drive.mem.len()
            || tree.length() != mem.len()
        {
            return Err(MachineError::DriveReplacement(index));
        }
        mem.clear_dirty();
        drive.mem = mem;
        // Nothing cached may lead to the old memory (translated loads reach a drive's pages
        // through host addresses).
        self.hart.flush_caches();
        let slot = 1 + index;
        if let Some(trees) = self.trees.as_mut() {
            trees[slot] = tree;
        } else if let Some(Pending(late)) = self.late_trees.take() {
            self.late_trees = Some(Pending(Box::new(move || {
                late().map(|mut trees| {
                    if let Some(t) = trees.get_mut(slot) {
                        *t = tree.clone();
                    }
                    trees
                })
            })));
        }
        Ok(())
    }

    /// Whether it counts writes for trees that may come at its first hash (see
    /// [`Machine::count_writes_from_here`]).
    pub fn awaits_page_trees(&self) -> bool {
        self.late_trees.is_some() && self.trees.is_none()
    }

    /// The state hash, `cmvm-sha256-v1:<64 hex>`.
    pub fn root_hash(&mut self) -> String {
        root_hash_text(&self.root_hash_bytes())
    }

    /// The top-level leaves of the state hash, in order: the state leaf, the device-tree
    /// ROM's root, RAM's root, each flash drive's root (from leaf
    /// [`Machine::FLASH_LEAVES_START`]); [`merkle::combine_leaves`] of them is the state
    /// hash. Updates the page trees from the dirty pages.
    pub fn hash_leaves(&mut self) -> Vec<merkle::Hash> {
        let mut old = self.trees.take();
        if let (None, Some(Pending(late))) = (&old, self.late_trees.take()) {
            old = late().filter(|trees| self.check_tree_shape(trees).is_ok());
        }
        let ranges = self.memory_ranges_mut();
        let trees = match old {
            Some(mut trees) => {
                for (tree, mem) in trees.iter_mut().zip(ranges) {
                    let dirty: Vec<usize> = mem.dirty_pages().map(|p| p as usize).collect();
                    tree.update(mem.bytes(), dirty)
                        .expect("page tree matches its range");
                    mem.clear_dirty();
                }
                trees
            }
            None => ranges
                .into_iter()
                .map(|mem| {
                    mem.clear_dirty();
                    PageTree::build(mem.bytes())
                })
                .collect(),
        };
        // The dirty bits are cleared: translated code must not store without marking.
        self.hart.forget_fast_stores();
        let mut leaves = vec![self.state_leaf(), self.dtb_root()];
        leaves.extend(trees.iter().map(PageTree::root));
        self.trees = Some(trees);
        leaves
    }

    /// The state hash as bytes, updating the page trees from the dirty pages.
    pub fn root_hash_bytes(&mut self) -> merkle::Hash {
        merkle::combine_leaves(&self.hash_leaves())
    }

    /// Top-level leaf of flash drive 0 (the state, the device tree and RAM come first).
    pub const FLASH_LEAVES_START: usize = 3;

    /// The page tree of memory range `index` (0 = RAM, `1 + i` = flash drive `i`) as of the
    /// last hash, if the trees are built.
    pub(crate) fn page_tree(&self, index: usize) -> Option<&PageTree> {
        self.trees.as_ref()?.get(index)
    }

    /// The state hash recomputed from scratch (no page tree reused), to check the
    /// incremental one.
    pub fn root_hash_from_scratch(&self) -> merkle::Hash {
        let mut leaves = vec![self.state_leaf(), self.dtb_root()];
        leaves.push(merkle::range_root(self.bus.ram.bytes()));
        leaves.extend(
            self.bus
                .flash
                .iter()
                .map(|f| merkle::range_root(f.mem.bytes())),
        );
        merkle::combine_leaves(&leaves)
    }

    /// The page-tree root of the device-tree ROM window. Recomputed each time rather than
    /// cached: the blob is a few pages and the rest are zero subtrees, so this costs a
    /// couple of page hashes.
    fn dtb_root(&self) -> merkle::Hash {
        dtb_leaf(&self.bus.dtb)
    }

    fn state_leaf(&self) -> merkle::Hash {
        let mut state = Vec::new();
        self.save_state(&mut state);
        state_leaf(&state)
    }

    fn memory_ranges_mut(&mut self) -> Vec<&mut MemRange> {
        let mut v = vec![&mut self.bus.ram];
        v.extend(self.bus.flash.iter_mut().map(|f| &mut f.mem));
        v
    }
}

/// `/chosen/rng-seed`: a hash of the run's inputs (never host randomness).
fn rng_seed(config: &MachineConfig) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cmbuild rng-seed v1");
    let mut field = |bytes: Option<&[u8]>| {
        let mut len = Vec::new();
        put_u8(&mut len, bytes.is_some() as u8);
        put_u64(&mut len, bytes.map_or(0, |b| b.len() as u64));
        h.update(&len);
        h.update(bytes.unwrap_or_default());
    };
    field(Some(&config.ram_length.to_le_bytes()));
    field(config.ram_image.as_deref());
    field(config.bios.as_deref());
    field(config.kernel.as_deref());
    field(config.initrd.as_deref());
    field(Some(config.bootargs.as_bytes()));
    for f in &config.flash_drives {
        field(Some(f.label.as_bytes()));
        field(Some(&f.image));
    }
    h.finalize().into()
}

/// The state hash's first leaf: the digest of the saved state ([`Machine::save_state`]).
pub(crate) fn state_leaf(state: &[u8]) -> merkle::Hash {
    Sha256::digest(state).into()
}

/// The state hash's second leaf: the root of the device-tree ROM holding `dtb`.
pub(crate) fn dtb_leaf(dtb: &[u8]) -> merkle::Hash {
    merkle::range_root_of_length(dtb, board::DTB_SIZE)
}

/// A state hash as its text, `cmvm-sha256-v1:<64 hex>`.
pub(crate) fn root_hash_text(root: &merkle::Hash) -> String {
    let hex: String = root.iter().map(|b| format!("{b:02x}")).collect();
    format!("{HASH_SCHEME}:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(bootargs: &str) -> MachineConfig {
        MachineConfig {
            ram_length: 1 << 20,
            ram_image: Some(vec![0x73, 0x00, 0x50, 0x10]), // wfi
            bootargs: bootargs.to_string(),
            ..MachineConfig::default()
        }
    }

    #[test]
    fn bootargs_alone_change_the_reset_hash() {
        let mut a = Machine::new(&config("console=ttyS0")).unwrap();
        let mut b = Machine::new(&config("console=ttyS0 quiet")).unwrap();
        // Everything but the device tree is equal at reset...
        let (mut sa, mut sb) = (Vec::new(), Vec::new());
        a.save_state(&mut sa);
        b.save_state(&mut sb);
        assert_eq!(sa, sb);
        assert_eq!(a.bus.ram.bytes(), b.bus.ram.bytes());
        assert_ne!(a.bus.dtb, b.bus.dtb);
        // ...and the hash still tells them apart.
        assert_ne!(a.root_hash(), b.root_hash());
        assert_eq!(a.root_hash_bytes(), a.root_hash_from_scratch());
    }

    #[test]
    fn the_root_combines_state_dtb_ram_and_flash_in_address_order() {
        let mut cfg = config("x");
        cfg.flash_drives.push(FlashConfig {
            label: "d".into(),
            image: vec![1; 5000],
            shared: false,
        });
        let mut m = Machine::new(&cfg).unwrap();
        let mut state = Vec::new();
        m.save_state(&mut state);
        let mut dtb_window = m.bus.dtb.clone();
        dtb_window.resize(board::DTB_SIZE as usize, 0);
        let expected = merkle::combine_leaves(&[
            Sha256::digest(&state).into(),
            merkle::range_root(&dtb_window),
            merkle::range_root(m.bus.ram.bytes()),
            merkle::range_root(m.bus.flash[0].mem.bytes()),
        ]);
        assert_eq!(m.root_hash_bytes(), expected);
        assert_eq!(m.root_hash_from_scratch(), expected);
    }

    /// [`config`] with a flash drive of 20,000 patterned bytes.
    fn config_with_a_drive() -> MachineConfig {
        let mut cfg = config("x");
        cfg.flash_drives.push(FlashConfig {
            label: "d".into(),
            image: (0..20_000u32).map(|i| (i % 251) as u8).collect(),
            shared: false,
        });
        cfg
    }

    #[test]
    fn adopted_page_trees_hash_like_the_machine_s_own() {
        let cfg = config_with_a_drive();
        let mut first = Machine::new(&cfg).unwrap();
        let trees = first.page_trees();
        let mut second = Machine::new(&cfg).unwrap();
        second.adopt_page_trees(trees.clone()).unwrap();
        assert_eq!(second.root_hash(), first.root_hash());
        // Written after the adoption: hashed again, like a machine's own trees.
        second.bus.ram.write_bytes(8192, b"written");
        second.bus.flash[0].mem.write_bytes(3, &[0; 9000]);
        assert_eq!(second.root_hash_bytes(), second.root_hash_from_scratch());
        assert_ne!(second.root_hash(), first.root_hash());
        // Trees of another machine's shape are refused.
        let mut other = Machine::new(&config("x")).unwrap();
        assert!(matches!(
            other.adopt_page_trees(trees),
            Err(MachineError::PageTreeShape)
        ));
    }

    /// Trees of the state a machine counted writes from, ready at its first hash (after it
    /// ran and wrote, itself and into a drive), are taken then and hash like trees built
    /// from scratch; they are asked for once. Not ready then, or of another shape, they
    /// are not taken and the hash is built from scratch.
    #[test]
    fn trees_of_an_earlier_state_taken_later_hash_like_the_machine_s_own() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let cfg = config_with_a_drive();
        let trees = Machine::new(&cfg).unwrap().page_trees();
        let asked = Arc::new(AtomicUsize::new(0));
        let source = |trees: Option<Vec<PageTree>>| -> LateTrees {
            let asked = asked.clone();
            Box::new(move || {
                asked.fetch_add(1, Ordering::SeqCst);
                trees.clone()
            })
        };
        let mut m = Machine::new(&cfg).unwrap();
        m.count_writes_from_here(source(Some(trees.clone())));
        assert!(m.awaits_page_trees());
        m.run(1000);
        m.bus.ram.write_bytes(8192, b"written");
        m.bus.flash[0].mem.write_bytes(3, &[0; 9000]);
        assert_eq!(m.root_hash_bytes(), m.root_hash_from_scratch());
        assert!(!m.awaits_page_trees());
        m.root_hash();
        assert_eq!(asked.load(Ordering::SeqCst), 1, "asked once");
        // Taken on trust (the caller's promise): trees of another state give another hash.
        let mut stale = Machine::new(&cfg).unwrap();
        stale
            .bus
            .ram
            .write_bytes(0, b"not the state the trees are of");
        let mut trusting = Machine::new(&cfg).unwrap();
        trusting.count_writes_from_here(source(Some(stale.page_trees())));
        assert_ne!(
            trusting.root_hash_bytes(),
            trusting.root_hash_from_scratch()
        );

        let mut early = Machine::new(&cfg).unwrap();
        early.count_writes_from_here(source(None));
        early.bus.ram.write_bytes(4096, b"x");
        assert_eq!(early.root_hash_bytes(), early.root_hash_from_scratch());
        let mut other = Machine::new(&config("x")).unwrap();
        other.count_writes_from_here(source(Some(trees)));
        assert_eq!(other.root_hash_bytes(), other.root_hash_from_scratch());
    }

    /// A drive whose memory is replaced (other host memory, other bytes, with their tree)
    /// is read anew by the guest, even where a load of the old memory was cached, and
    /// hashes like the same bytes hashed from scratch: with the machine's trees built, with
    /// trees still to come, and with none.
    #[test]
    fn a_replaced_drive_is_what_the_guest_reads_and_what_is_hashed() {
        let cfg = config_with_a_drive();
        let start = Machine::new(&cfg).unwrap().bus.flash[0].mem.start;
        // auipc t0, (drive - RAM_BASE) >> 12; loop: ld a0, 8(t0); j loop
        let auipc = 0x297 | (((start - RAM_BASE) as u32 >> 12) << 12);
        let program: Vec<u8> = [auipc, 0x0082_b503, 0xffdf_f06f]
            .into_iter()
            .flat_map(u32::to_le_bytes)
            .collect();
        let old_value = u64::from_le_bytes(cfg.flash_drives[0].image[8..16].try_into().unwrap());
        let replacement = |m: &Machine| {
            let length = m.bus.flash[0].mem.len();
            let bytes: Vec<u8> = (0..length).map(|i| (i % 241) as u8 ^ 0x5a).collect();
            let tree = PageTree::build(&bytes);
            (MemRange::from_vec(start, bytes, length), tree)
        };
        let fresh = || {
            let mut m = Machine::new(&cfg).unwrap();
            m.bus.ram.write_bytes(0, &program);
            m
        };
        let original_trees = fresh().page_trees();
        for when in ["built", "late", "none"] {
            let mut m = fresh();
            match when {
                "built" => drop(m.page_trees()),
                "late" => {
                    let trees = original_trees.clone();
                    m.count_writes_from_here(Box::new(move || Some(trees.clone())));
                }
                _ => {}
            }
            m.run(1000);
            assert_eq!(m.hart.get_x(10), old_value, "{when}");
            let (mem, tree) = replacement(&m);
            let new_value = u64::from_le_bytes(mem.bytes()[8..16].try_into().unwrap());
            m.replace_drive(0, mem, tree).unwrap();
            m.run(2000);
            assert_eq!(
                m.hart.get_x(10),
                new_value,
                "{when}: the guest reads the new memory"
            );
            assert_eq!(m.root_hash_bytes(), m.root_hash_from_scratch(), "{when}");
            // Written after the replacement: hashed again.
            m.bus.flash[0].mem.write_bytes(5000, b"written");
            assert_eq!(m.root_hash_bytes(), m.root_hash_from_scratch(), "{when}");
        }
        // Memory or a tree of another length, or no such drive: refused.
        let mut m = Machine::new(&cfg).unwrap();
        let length = m.bus.flash[0].mem.len();
        let short = || MemRange::from_vec(start, vec![1; 4096], 4096);
        let (mem, tree) = replacement(&m);
        assert!(matches!(
            m.replace_drive(0, short(), tree.clone()),
            Err(MachineError::DriveReplacement(0))
        ));
        assert!(matches!(
            m.replace_drive(0, mem, PageTree::build(&[0; 4096])),
            Err(MachineError::DriveReplacement(0))
        ));
        assert!(matches!(
            m.replace_drive(1, MemRange::from_vec(start, vec![], length), tree),
            Err(MachineError::DriveReplacement(1))
        ));
    }

    #[test]
    fn idle_and_drive_store_counters_are_not_state() {
        // sd zero to the flash drive, then wfi with no interrupt enabled: sleeps to the limit.
        let mut cfg = config("x");
        cfg.flash_drives.push(FlashConfig {
            label: "d".into(),
            image: vec![0; 4096],
            shared: false,
        });
        let flash = Machine::new(&cfg).unwrap().bus.flash[0].mem.start;
        let mut program = Vec::new();
        // auipc t0, (flash - RAM_BASE) >> 12 (page aligned, a little above RAM)
        let auipc = 0x297 | (((flash - RAM_BASE) as u32 >> 12) << 12);
        // sd zero, 0(t0); wfi; j .-4 (back to the wfi)
        for insn in [auipc, 0x0002_b023, 0x1050_0073, 0xffdf_f06f] {
            program.extend_from_slice(&u32::to_le_bytes(insn));
        }
        cfg.ram_image = Some(program);
        let mut m2 = Machine::new(&cfg).unwrap();
        let before = m2.root_hash();
        let mut state = Vec::new();
        m2.save_state(&mut state);
        assert_eq!((m2.idle_cycles(), m2.drive_stores()), (0, 0));
        m2.run(1000);
        assert_eq!(m2.drive_stores(), 1);
        assert!(m2.idle_cycles() >= 990, "{}", m2.idle_cycles());
        // A machine with other counters but the same state has the same hash.
        let mut twin = Machine::new(&cfg).unwrap();
        twin.run(1000);
        twin.hart.idle_cycles = 0;
        twin.bus.flash_stores = 7;
        assert_eq!(twin.root_hash(), m2.root_hash());
        assert_ne!(before, m2.root_hash());
    }

    /// Devices write guest RAM through [`crate::devices::virtio_console::Dma`]; the hart
    /// must not run what it decoded or translated from there before.
    #[test]
    fn code_a_device_rewrites_is_not_run_stale() {
        // _start: li s0, 0; li s1, 200
        // 1: call f; addi s0, s0, 1; blt s0, s1, 1b   (f is hot: decoded and translated)
        //    lla t2, flag
        // 2: ld t1, 0(t2); beqz t1, 2b                 (spin until the host says so)
        //    call f; halt with its result (HTIF tohost = a0 << 1 | 1); 3: j 3b
        // f (at +0x40): li a0, 1; ret.  flag (at +0x80): .dword 0
        let words: [u32; 18] = [
            0x0493_4401,
            0x0097_0c80,
            0x80e7_0000,
            0x0405_03a0,
            0xfe94_4be3,
            0x0000_0397,
            0x06c3_8393,
            0x0003_b303,
            0xfe03_0ee3,
            0x0000_0097,
            0x01c0_80e7,
            0x6513_0506,
            0x82b7_0015,
            0xb023_4000,
            0xa001_00a2,
            0x0000_0013,
            0x8082_4505,
            0x0000_0013,
        ];
        let mut image: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        image.resize(0x88, 0);
        let run = |jit: bool| {
            let mut m = Machine::new(&MachineConfig {
                ram_length: 1 << 20,
                ram_image: Some(image.clone()),
                ..MachineConfig::default()
            })
            .unwrap();
            m.hart.set_jit(jit);
            assert_eq!(m.run(20_000), Break::MaxMcycle);
            let mut dma = crate::devices::virtio_console::Dma {
                ram: &mut m.bus.ram,
                log: &mut m.bus.dma_log,
            };
            // f becomes `li a0, 2` (c.li), and the flag is raised.
            dma.write(RAM_BASE + 0x40, &0x4509u16.to_le_bytes())
                .unwrap();
            dma.write(RAM_BASE + 0x80, &1u64.to_le_bytes()).unwrap();
            assert_eq!(m.run(40_000), Break::Halted(2), "jit {jit}");
            (m.mcycle(), m.root_hash())
        };
        assert_eq!(run(true), run(false));
    }

    #[test]
    fn taking_the_images_builds_the_same_machine_as_copying_them() {
        let mut cfg = config("x");
        for (label, image) in [("a", vec![7u8; 9000]), ("b", vec![0u8; 3]), ("c", vec![])] {
            cfg.flash_drives.push(FlashConfig {
                label: label.into(),
                image,
                shared: false,
            });
        }
        let mut copied = Machine::new(&cfg).unwrap();
        let mut taken = Machine::from_config(cfg).unwrap();
        assert_eq!(copied.bus.flash.len(), 3);
        for (a, b) in copied.bus.flash.iter().zip(&taken.bus.flash) {
            assert_eq!((a.mem.start, a.image_length), (b.mem.start, b.image_length));
            assert_eq!(a.mem.bytes(), b.mem.bytes());
        }
        assert_eq!(copied.root_hash(), taken.root_hash());
    }
}
