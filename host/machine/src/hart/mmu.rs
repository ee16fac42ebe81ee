//! Virtual memory: Sv39/Sv48 page-table walks and a software TLB, plus the load, store
//! and fetch paths that use them.
//!
//! The TLB is direct-mapped, one array per access kind (fetch, load, store). A tag is
//! the virtual page number with a context in its top bits: the effective privilege,
//! `mstatus.SUM`/`MXR` and whether translation is on. Changing privilege or those bits
//! therefore needs no flush — entries of another context simply miss — while a `satp`
//! write or `sfence.vma` flushes everything. Store entries are only made once the PTE's
//! D bit is set, so a hit never needs a page-table update.

use super::csr::*;
use super::{cause, Exception, Hart, Insn, Privilege};
use crate::bus::{Bus, RegionId};

/// Entries per TLB array (the JIT's inline lookup masks with it too).
pub(super) const TLB_SIZE: usize = 4096;

/// What an access is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Access {
    /// Instruction fetch.
    Fetch,
    /// Load (and LR).
    Load,
    /// Store and AMO.
    Store,
}

impl Access {
    fn page_fault(self, va: u64) -> Exception {
        let cause = match self {
            Access::Fetch => cause::FETCH_PAGE,
            Access::Load => cause::LOAD_PAGE,
            Access::Store => cause::STORE_PAGE,
        };
        Exception { cause, tval: va }
    }

    fn access_fault(self, va: u64) -> Exception {
        let cause = match self {
            Access::Fetch => cause::FETCH_ACCESS,
            Access::Load => cause::LOAD_ACCESS,
            Access::Store => cause::STORE_ACCESS,
        };
        Exception { cause, tval: va }
    }
}

/// A cached translation of one virtual page. `repr(C)` because translated code reads
/// it: `delta` at 8 and `inline_tag` at 24, 32 bytes an entry; see [`super::jit`] and the
/// layout assertions below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(super) struct TlbEntry {
    /// `vpn | ctx`; 0 never matches (every context has bit 63 set).
    pub(super) tag: u64,
    /// Where the bytes of an address `va` in the page are, with no masking: for memory
    /// (RAM or a flash drive), at host address `va + delta`, so translated code reaches
    /// them with one add (the bus's host addresses are in it: see [`Mmu::layout`]); for
    /// a device or the DTB ROM, at physical address `va + delta`. Wrapping arithmetic.
    pub(super) delta: u64,
    /// The memory region of the physical page; `None` when it is not memory.
    pub(super) region: Option<RegionId>,
    /// With a `region`: the page's offset inside it, in pages (regions are below
    /// [`crate::machine::MEMORY_LIMIT`], so it fits).
    frame: u32,
    /// `tag` if translated code may reach the page inline, else 0 (which never matches):
    /// translated code compares this one. In the fetch TLB, a RAM page; in the load TLB,
    /// a RAM or flash page (a guest reading its drives copies them into its page cache
    /// with loads, millions per build, which would otherwise each call Rust). In the
    /// store TLB, a RAM page only while it is also marked dirty and holds no decoded
    /// code, so that translated code's inline store needs neither the dirty mark nor the
    /// decode cache's check: a fill marks the page dirty and asks the decode cache
    /// ([`Hart::fast_store_tag`]), a page that gets decoded code clears it
    /// ([`Hart::point_fetch_at`]), and clearing the dirty bitmap empties the entries that
    /// had it ([`Hart::forget_fast_stores`]). Everything else reads `tag`, so stores by
    /// the interpreter are not affected.
    pub(super) inline_tag: u64,
}

/// Where a TLB entry leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PageTarget {
    /// A page of memory: its region and the page's offset in it.
    Memory(RegionId, u64),
    /// Not memory (devices, the DTB ROM): the physical address of the page.
    Device(u64),
}

impl TlbEntry {
    /// An entry tagged `tag` leading to `target`, whose region's first byte is at host
    /// address `host` (unused for a device).
    fn new(tag: u64, target: PageTarget, host: u64) -> Self {
        match target {
            PageTarget::Memory(region, offset) => Self {
                tag,
                delta: host.wrapping_add(offset).wrapping_sub(page_va(tag)),
                region: Some(region),
                frame: u32::try_from(offset >> 12).expect("regions are below MEMORY_LIMIT"),
                inline_tag: if region == RegionId::RAM { tag } else { 0 },
            },
            PageTarget::Device(pa) => Self {
                tag,
                delta: pa.wrapping_sub(page_va(tag)),
                region: None,
                frame: 0,
                inline_tag: 0,
            },
        }
    }

    /// With a `region`: the offset of the physical page inside that region. Without: the
    /// physical address of the page (a device or the DTB ROM). [`TlbEntry::target`] reads
    /// the two cases apart.
    pub(super) fn page(&self) -> u64 {
        match self.region {
            Some(_) => u64::from(self.frame) << 12,
            None => self.delta.wrapping_add(page_va(self.tag)),
        }
    }

    /// Where `frame` is (translated code reads it; the field stays private).
    pub(super) const FRAME_AT: usize = std::mem::offset_of!(TlbEntry, frame);

    /// With a `region`: the offset of `va` (in this entry's page) inside that region.
    #[inline(always)]
    pub(super) fn offset_of(&self, va: u64) -> u64 {
        u64::from(self.frame) << 12 | (va & 0xfff)
    }

    /// Where this entry leads.
    fn target(&self) -> PageTarget {
        match self.region {
            Some(region) => PageTarget::Memory(region, self.page()),
            None => PageTarget::Device(self.page()),
        }
    }
}

/// Where `bus`'s memory is on the host, as [`Mmu::layout`] records it: RAM's first byte,
/// then each flash drive's.
fn layout_of(bus: &Bus) -> impl Iterator<Item = u64> + '_ {
    std::iter::once(bus.ram.host_addr()).chain(bus.flash.iter().map(|f| f.mem.host_addr()))
}

/// The virtual address of the page a tag (`vpn | ctx`) names: the context bits are above
/// any page number's.
const fn page_va(tag: u64) -> u64 {
    (tag & (u64::MAX >> 12)) << 12
}
const _: () = assert!(page_va(0xfff0_0000_0000_1000 >> 12 | 1 << 63) == 0xfff0_0000_0000_1000);

// The layout translated code relies on (`jit::compile` reads these offsets).
const _: () = {
    assert!(std::mem::offset_of!(TlbEntry, tag) == 0);
    assert!(std::mem::offset_of!(TlbEntry, delta) == 8);
    assert!(std::mem::offset_of!(TlbEntry, region) == 16);
    assert!(std::mem::offset_of!(TlbEntry, frame) == 20);
    assert!(std::mem::offset_of!(TlbEntry, inline_tag) == 24);
    assert!(std::mem::size_of::<TlbEntry>() == 32);
    assert!(std::mem::size_of::<Option<RegionId>>() == 4);
};

const EMPTY: TlbEntry = TlbEntry {
    tag: 0,
    region: None,
    delta: 0,
    frame: 0,
    inline_tag: 0,
};

/// The translation caches of the hart. `repr(C)` with the contexts last: translated code
/// reads them on every memory access, next to the hart fields after this (see
/// [`Hart`]).
#[derive(Debug)]
#[repr(C)]
pub struct Mmu {
    pub(super) fetch: Box<[TlbEntry; TLB_SIZE]>,
    pub(super) load: Box<[TlbEntry; TLB_SIZE]>,
    pub(super) store: Box<[TlbEntry; TLB_SIZE]>,
    /// The page the last fetch came from: `vpn | fetch_ctx`, or 0.
    pub(super) fetch_tag: u64,
    /// Its decode-cache page.
    pub(super) fetch_page: u32,
    /// Entries filled since the last flush (array in the top two bits, index below), so a
    /// flush clears those rather than all three arrays; `None` once there were too many
    /// to track (then a flush clears everything).
    filled: Option<Vec<u32>>,
    /// Where RAM's and then each flash drive's bytes were on the host when memory
    /// entries were filled since the last flush (empty if none were): their `delta`s hold
    /// it, so they are good only on a bus laid out the same way. [`Hart::run`] empties
    /// the TLBs when it is handed a bus laid out otherwise ([`Mmu::layout_is`]), and a
    /// fill on another bus empties them first.
    layout: Vec<u64>,
    /// Context bits of fetches (privilege, translation on).
    pub(super) fetch_ctx: u64,
    /// Context bits of loads and stores (effective privilege after MPRV, SUM, MXR).
    pub(super) data_ctx: u64,
}

/// A TLB array, allocated on the heap directly (it is too large for some thread stacks).
fn empty_tlb() -> Box<[TlbEntry; TLB_SIZE]> {
    vec![EMPTY; TLB_SIZE]
        .into_boxed_slice()
        .try_into()
        .expect("TLB_SIZE entries")
}

impl Mmu {
    pub(super) fn new() -> Self {
        Self {
            fetch: empty_tlb(),
            load: empty_tlb(),
            store: empty_tlb(),
            fetch_ctx: 1 << 63,
            data_ctx: 1 << 63,
            fetch_tag: 0,
            fetch_page: 0,
            filled: Some(Vec::new()),
            layout: Vec::new(),
        }
    }

    /// Whether the memory entries in the TLBs (if any) were filled on a bus laid out as
    /// `bus` is (see [`Mmu::layout`]).
    pub(super) fn layout_is(&self, bus: &Bus) -> bool {
        self.layout.is_empty() || self.layout.iter().copied().eq(layout_of(bus))
    }

    /// Before an entry of memory region `region` is filled from `bus`: records its
    /// layout, emptying the TLBs first if entries of another layout are in them. A RAM
    /// entry holds RAM's host address only, so RAM's is all it compares once a layout is
    /// recorded (the flash drives' are compared when theirs are filled, and by
    /// [`Hart::run`]).
    #[inline(always)]
    fn note_layout(&mut self, bus: &Bus, region: RegionId) {
        let same = match self.layout.first() {
            None => false,
            Some(&ram) if region == RegionId::RAM => ram == bus.ram.host_addr(),
            Some(_) => self.layout_is(bus),
        };
        if !same {
            self.note_new_layout(bus);
        }
    }

    #[cold]
    fn note_new_layout(&mut self, bus: &Bus) {
        if !self.layout.is_empty() {
            self.flush();
        }
        self.layout.extend(layout_of(bus));
    }

    /// Drops every translation (satp write, sfence.vma). Linux does this on every switch
    /// of address space, so it costs what was filled since the last one, not the arrays'
    /// size.
    pub(super) fn flush(&mut self) {
        self.layout.clear();
        match self.filled.as_mut() {
            Some(filled) => {
                for f in std::mem::take(filled) {
                    let access = [Access::Fetch, Access::Load, Access::Store][(f >> 30) as usize];
                    self.table_mut(access)[(f & 0x3fff_ffff) as usize] = EMPTY;
                }
            }
            None => {
                self.fetch.fill(EMPTY);
                self.load.fill(EMPTY);
                self.store.fill(EMPTY);
                self.filled = Some(Vec::new());
            }
        }
        self.fetch_tag = 0;
    }

    /// The TLB array for `access`.
    fn table_mut(&mut self, access: Access) -> &mut [TlbEntry; TLB_SIZE] {
        match access {
            Access::Fetch => &mut self.fetch,
            Access::Load => &mut self.load,
            Access::Store => &mut self.store,
        }
    }

    /// Notes that entry `index` of the array for `access` was filled.
    fn note_filled(&mut self, access: Access, index: usize) {
        if let Some(filled) = self.filled.as_mut() {
            if filled.len() >= TLB_SIZE {
                self.filled = None;
            } else {
                filled.push((access as u32) << 30 | index as u32);
            }
        }
    }

    /// Recomputes the contexts after a change of privilege, `mstatus` or `satp`.
    pub(super) fn update_ctx(&mut self, prv: Privilege, mstatus: u64, satp: u64) {
        let bare = satp >> 60 == SATP_MODE_BARE;
        let data_prv = if mstatus & MSTATUS_MPRV != 0 && prv == Privilege::Machine {
            Privilege::from_mpp(mstatus)
        } else {
            prv
        };
        let ctx = |p: Privilege, sum: bool, mxr: bool| {
            let translated = !bare && p != Privilege::Machine;
            (1u64 << 63)
                | ((p.as_u8() as u64) << 56)
                | ((translated as u64) << 58)
                | ((sum as u64) << 59)
                | ((mxr as u64) << 60)
        };
        self.fetch_ctx = ctx(prv, false, false);
        self.data_ctx = ctx(
            data_prv,
            mstatus & MSTATUS_SUM != 0,
            mstatus & MSTATUS_MXR != 0,
        );
    }
}

#[inline(always)]
fn tlb_index(va: u64) -> usize {
    ((va >> 12) as usize) & (TLB_SIZE - 1)
}

#[inline(always)]
pub(super) fn vpn(va: u64) -> u64 {
    va >> 12
}

impl Hart {
    /// Translates `va` for `access` by walking the page tables (no TLB).
    pub fn translate(&mut self, bus: &mut Bus, va: u64, access: Access) -> Result<u64, Exception> {
        let mstatus = self.csr.mstatus;
        let prv = match access {
            Access::Fetch => self.prv,
            _ if mstatus & MSTATUS_MPRV != 0 && self.prv == Privilege::Machine => {
                Privilege::from_mpp(mstatus)
            }
            _ => self.prv,
        };
        let mode = self.csr.satp >> 60;
        if prv == Privilege::Machine || mode == SATP_MODE_BARE {
            return Ok(va);
        }
        let levels: u32 = if mode == SATP_MODE_SV39 { 3 } else { 4 };
        let va_bits = 12 + 9 * levels;
        let shift = 64 - va_bits;
        if ((va << shift) as i64 >> shift) as u64 != va {
            return Err(access.page_fault(va));
        }
        let mut table = (self.csr.satp & SATP_PPN) << 12;
        for level in (0..levels).rev() {
            let pte_addr = table + ((va >> (12 + 9 * level)) & 0x1ff) * 8;
            let Some((region, off)) = bus.find_memory(pte_addr) else {
                return Err(access.access_fault(va));
            };
            let pte = bus.region(region).read_sized(off, 8);
            let (v, r, w, x, u, a, d) = (
                pte & 1 != 0,
                pte & 2 != 0,
                pte & 4 != 0,
                pte & 8 != 0,
                pte & 16 != 0,
                pte & 64 != 0,
                pte & 128 != 0,
            );
            // Bits 63:54 (N, PBMT, reserved) must be zero: no Svnapot, no Svpbmt.
            if !v || (!r && w) || pte >> 54 != 0 {
                return Err(access.page_fault(va));
            }
            let ppn = (pte >> 10) & ((1 << 44) - 1);
            if !r && !x {
                if level == 0 {
                    return Err(access.page_fault(va));
                }
                table = ppn << 12;
                continue;
            }
            let allowed = match access {
                Access::Fetch => x,
                Access::Load => r || (x && mstatus & MSTATUS_MXR != 0),
                Access::Store => w,
            };
            let user_ok = match prv {
                Privilege::User => u,
                Privilege::Supervisor => {
                    !u || (access != Access::Fetch && mstatus & MSTATUS_SUM != 0)
                }
                Privilege::Machine => true,
            };
            let page_mask = (1u64 << (9 * level)) - 1;
            if !allowed || !user_ok || ppn & page_mask != 0 {
                return Err(access.page_fault(va));
            }
            // Hardware A/D updates (as QEMU and the Cartesi Machine do).
            let need_d = access == Access::Store && !d;
            if !a || need_d {
                let new = pte | 64 | if need_d { 128 } else { 0 };
                bus.region_mut(region).write_sized(off, 8, new);
                if region == RegionId::RAM {
                    self.dcache.invalidate(off, 8);
                }
            }
            let offset_mask = (1u64 << (12 + 9 * level)) - 1;
            return Ok(((ppn << 12) & !offset_mask) | (va & offset_mask));
        }
        unreachable!("the loop returns at level 0")
    }

    /// The TLB entry for `va`, walking and filling on a miss.
    #[inline(never)]
    fn fill_tlb(&mut self, bus: &mut Bus, va: u64, access: Access) -> Result<TlbEntry, Exception> {
        let pa = self.translate(bus, va, access)?;
        let ctx = match access {
            Access::Fetch => self.mmu.fetch_ctx,
            _ => self.mmu.data_ctx,
        };
        let (target, host) = match bus.find_memory(pa & !0xfff) {
            Some((region, off)) => {
                self.mmu.note_layout(bus, region);
                (
                    PageTarget::Memory(region, off),
                    bus.region(region).host_addr(),
                )
            }
            None => (PageTarget::Device(pa & !0xfff), 0),
        };
        let mut entry = TlbEntry::new(vpn(va) | ctx, target, host);
        match (access, entry.region) {
            (Access::Store, _) => entry.inline_tag = self.fast_store_tag(bus, &entry),
            (Access::Load, Some(_)) => entry.inline_tag = entry.tag,
            _ => {}
        }
        #[cfg(feature = "counters")]
        {
            let old = self.mmu.table_mut(access)[tlb_index(va)].tag;
            let flushes = self.counters.now.tlb_flushes;
            let second = self.counters.refill(
                access as usize,
                tlb_index(va),
                TLB_SIZE,
                entry.tag,
                old,
                flushes,
            ) as u64;
            let c = &mut self.counters.now;
            let (fills, seconds) = match access {
                Access::Fetch => (&mut c.fill_fetch, &mut c.second_way_fetch),
                Access::Load => (&mut c.fill_load, &mut c.second_way_load),
                Access::Store => (&mut c.fill_store, &mut c.second_way_store),
            };
            *fills += 1;
            *seconds += second;
        }
        self.mmu.table_mut(access)[tlb_index(va)] = entry;
        self.mmu.note_filled(access, tlb_index(va));
        Ok(entry)
    }

    /// The `inline_tag` of a new store-TLB entry: its `tag` if it leads to a RAM page with no
    /// decoded code, which it marks dirty now (translated code's stores through it will
    /// not), else 0.
    fn fast_store_tag(&mut self, bus: &mut Bus, entry: &TlbEntry) -> u64 {
        if entry.inline_tag == 0 || self.dcache.holds(entry.page() >> 12) {
            return 0;
        }
        bus.ram.mark_dirty(entry.page() >> 12);
        entry.inline_tag
    }

    /// Empties the store-TLB entries translated code stores through, after RAM's dirty
    /// bitmap was cleared (their pages are no longer marked): the next store through
    /// each walks again and its fill marks the page anew.
    pub(crate) fn forget_fast_stores(&mut self) {
        for e in self.mmu.store.iter_mut() {
            if e.inline_tag != 0 {
                *e = EMPTY;
            }
        }
    }

    #[inline(always)]
    fn lookup(&mut self, bus: &mut Bus, va: u64, access: Access) -> Result<TlbEntry, Exception> {
        let (table, ctx) = match access {
            Access::Fetch => (&self.mmu.fetch, self.mmu.fetch_ctx),
            Access::Load => (&self.mmu.load, self.mmu.data_ctx),
            Access::Store => (&self.mmu.store, self.mmu.data_ctx),
        };
        let e = table[tlb_index(va)];
        if e.tag == vpn(va) | ctx {
            Ok(e)
        } else {
            self.fill_tlb(bus, va, access)
        }
    }

    /// Loads `size` bytes (1, 2, 4, 8) at virtual address `va`, zero-extended.
    #[inline(always)]
    pub fn load(&mut self, bus: &mut Bus, va: u64, size: u32) -> Result<u64, Exception> {
        if va & (size as u64 - 1) != 0 {
            return self.load_misaligned(bus, va, size);
        }
        let e = self.mmu.load[tlb_index(va)];
        if e.tag == vpn(va) | self.mmu.data_ctx && e.region == Some(RegionId::RAM) {
            return Ok(bus.ram.read_sized(e.offset_of(va), size));
        }
        self.load_slow(bus, va, size)
    }

    #[inline(never)]
    fn load_slow(&mut self, bus: &mut Bus, va: u64, size: u32) -> Result<u64, Exception> {
        let in_page = va & 0xfff;
        match self.lookup(bus, va, Access::Load)?.target() {
            PageTarget::Memory(region, page) => {
                Ok(bus.region(region).read_sized(page + in_page, size))
            }
            PageTarget::Device(page) => bus
                .read_mmio(page + in_page, size, self.mcycle)
                .ok_or(Access::Load.access_fault(va)),
        }
    }

    /// A load for translated code that missed its inline path (a TLB miss, a page that
    /// is not RAM, a misaligned address), done exactly as [`Hart::load`] would with
    /// `mcycle` advanced by `retired` (what the block retired before it). `None`, with
    /// nothing architectural changed that re-executing the load would not change the
    /// same way, when the load faults, or when filling the TLB wrote a page-table entry
    /// into a page with decoded code (the running block may be stale): then the block
    /// leaves and the interpreter executes the load.
    pub(super) fn load_for_jit(
        &mut self,
        bus: &mut Bus,
        va: u64,
        size: u32,
        retired: u64,
    ) -> Option<u64> {
        let writes = self.dcache.code_writes();
        // Every translation the load needs first, as `load` would make them (the walks'
        // A-bit updates are the same either way): `load` below then only hits the TLB.
        let translated = if va & (size as u64 - 1) != 0 {
            self.check_both_pages(bus, va, size, Access::Load)
        } else {
            self.lookup(bus, va, Access::Load).map(|_| ())
        };
        if translated.is_err() || self.dcache.code_writes() != writes {
            return None;
        }
        let running = self.mcycle;
        self.mcycle = running + retired;
        let value = self.load(bus, va, size);
        self.mcycle = running;
        value.ok()
    }

    /// The fetch-TLB entry for `pc` that the interpreter's next fetch would make, for
    /// translated code chaining there (it calls this only when that fetch is next).
    /// Returns whether `pc`'s page is now mapped to RAM, and the walk wrote into no page
    /// with decoded code. A walk that faults changes nothing: the interpreter's fetch
    /// repeats it and takes the fault.
    pub(super) fn fill_fetch_for_jit(&mut self, bus: &mut Bus, pc: u64) -> bool {
        let writes = self.dcache.code_writes();
        match self.lookup(bus, pc, Access::Fetch) {
            Ok(e) => e.region == Some(RegionId::RAM) && self.dcache.code_writes() == writes,
            Err(_) => false,
        }
    }

    /// Misaligned loads are emulated byte by byte (all bytes checked before any is read).
    #[inline(never)]
    fn load_misaligned(&mut self, bus: &mut Bus, va: u64, size: u32) -> Result<u64, Exception> {
        self.check_both_pages(bus, va, size, Access::Load)?;
        let mut value = 0;
        for i in 0..size as u64 {
            value |= self.load(bus, va.wrapping_add(i), 1)? << (8 * i);
        }
        Ok(value)
    }

    /// Translates both pages a misaligned access touches before any byte moves. A fault on
    /// the second page reports that page's first address (as QEMU does): it is the first
    /// byte that could not be accessed.
    fn check_both_pages(
        &mut self,
        bus: &mut Bus,
        va: u64,
        size: u32,
        access: Access,
    ) -> Result<(), Exception> {
        self.lookup(bus, va, access)?;
        let last = va.wrapping_add(size as u64 - 1);
        if (last ^ va) >> 12 != 0 {
            self.lookup(bus, last, access).map_err(|e| Exception {
                tval: last & !0xfff,
                ..e
            })?;
        }
        Ok(())
    }

    /// Stores the low `size` bytes of `value` at virtual address `va`.
    #[inline(always)]
    pub fn store(
        &mut self,
        bus: &mut Bus,
        va: u64,
        size: u32,
        value: u64,
    ) -> Result<(), Exception> {
        if va & (size as u64 - 1) != 0 {
            return self.store_misaligned(bus, va, size, value);
        }
        let e = self.mmu.store[tlb_index(va)];
        if e.tag == vpn(va) | self.mmu.data_ctx && e.region == Some(RegionId::RAM) {
            let off = e.offset_of(va);
            bus.ram.write_sized(off, size, value);
            self.dcache.invalidate(off, size);
            return Ok(());
        }
        self.store_slow(bus, va, size, value)
    }

    #[inline(never)]
    fn store_slow(
        &mut self,
        bus: &mut Bus,
        va: u64,
        size: u32,
        value: u64,
    ) -> Result<(), Exception> {
        let in_page = va & 0xfff;
        match self.lookup(bus, va, Access::Store)?.target() {
            PageTarget::Memory(region, page) => {
                let off = page + in_page;
                bus.region_mut(region).write_sized(off, size, value);
                if region == RegionId::RAM {
                    self.dcache.invalidate(off, size);
                }
                Ok(())
            }
            PageTarget::Device(page) => {
                // A device may have raised or lowered an interrupt line, or halted the
                // machine.
                self.request_stop();
                bus.write_mmio(page + in_page, size, value, self.mcycle)
                    .ok_or(Access::Store.access_fault(va))
            }
        }
    }

    #[inline(never)]
    fn store_misaligned(
        &mut self,
        bus: &mut Bus,
        va: u64,
        size: u32,
        value: u64,
    ) -> Result<(), Exception> {
        self.check_both_pages(bus, va, size, Access::Store)?;
        for i in 0..size as u64 {
            self.store(bus, va.wrapping_add(i), 1, value >> (8 * i))?;
        }
        Ok(())
    }

    /// Translates `va` for a store without storing (AMOs check write permission first).
    pub(super) fn translate_store(&mut self, bus: &mut Bus, va: u64) -> Result<u64, Exception> {
        let in_page = va & 0xfff;
        Ok(match self.lookup(bus, va, Access::Store)?.target() {
            PageTarget::Memory(region, page) => bus.region(region).start + page + in_page,
            PageTarget::Device(page) => page + in_page,
        })
    }

    /// Drops every translation (`sfence.vma`, `satp` writes).
    pub(super) fn flush_tlb(&mut self) {
        super::count!(self, tlb_flushes);
        self.mmu.flush();
    }

    /// Fetches the instruction at `pc`, decoded, through the decode cache.
    #[inline(always)]
    /// A fetch fault comes back as an [`super::Op::FetchFault`] instruction (the
    /// exception itself in `self.fetch_fault`): returning a plain `Insn` keeps the hot
    /// path free of a `Result` aggregate copied through memory.
    pub(super) fn fetch(&mut self, bus: &mut Bus) -> Insn {
        let pc = self.pc;
        if vpn(pc) | self.mmu.fetch_ctx == self.mmu.fetch_tag {
            let insn = self.dcache.get(self.mmu.fetch_page, pc);
            if insn.op != super::Op::Undecoded {
                return insn;
            }
        }
        match self.fetch_slow(bus) {
            Ok(insn) => insn,
            Err(e) => {
                self.fetch_fault = e;
                Insn {
                    op: super::Op::FetchFault,
                    ..Insn::UNDECODED
                }
            }
        }
    }

    /// Points the fetch fast path at `pc`'s page if the fetch TLB already maps it to RAM
    /// (no walk, so no fault: anything else is left to [`Hart::fetch`]). Lets translated
    /// code continue in another page without an interpreted instruction in between.
    pub(super) fn refill_fetch_page(&mut self) -> bool {
        let pc = self.pc;
        let e = self.mmu.fetch[tlb_index(pc)];
        if e.tag != vpn(pc) | self.mmu.fetch_ctx || e.region != Some(RegionId::RAM) {
            return false;
        }
        self.point_fetch_at(e);
        true
    }

    /// Makes the fetch fast path serve `pc`'s page, which `e` maps to RAM; returns its
    /// decode-cache page.
    fn point_fetch_at(&mut self, e: TlbEntry) -> u32 {
        if !self.dcache.holds(e.page() >> 12) {
            // The page is about to hold decoded code: translated code must no longer
            // store into it inline (stores into code go through the interpreter, which
            // drops what they overwrite).
            for s in self.mmu.store.iter_mut() {
                if s.inline_tag != 0 && s.page() == e.page() {
                    s.inline_tag = 0;
                }
            }
        }
        let page = self.dcache.page_for(e.page() >> 12);
        self.mmu.fetch_tag = vpn(self.pc) | self.mmu.fetch_ctx;
        self.mmu.fetch_page = page;
        page
    }

    #[inline(never)]
    fn fetch_slow(&mut self, bus: &mut Bus) -> Result<Insn, Exception> {
        let pc = self.pc;
        let e = self.lookup(bus, pc, Access::Fetch)?;
        match e.target() {
            PageTarget::Memory(RegionId::RAM, _) => {}
            PageTarget::Memory(region, page) => {
                // Flash: decode every time (nothing here runs code from there).
                self.mmu.fetch_tag = 0;
                let lo = bus.region(region).read_sized(page + (pc & 0xfff), 2) as u32;
                return self.finish_fetch(bus, pc, lo);
            }
            PageTarget::Device(_) => {
                self.mmu.fetch_tag = 0;
                return Err(Access::Fetch.access_fault(pc));
            }
        }
        let page = self.point_fetch_at(e);
        let cached = self.dcache.get(page, pc);
        if cached.op != super::Op::Undecoded {
            return Ok(cached);
        }
        let off = e.offset_of(pc);
        let lo = bus.ram.read_sized(off, 2) as u32;
        if lo & 3 != 3 || pc & 0xfff != 0xffe {
            let raw = if lo & 3 == 3 {
                bus.ram.read_sized(off, 4) as u32
            } else {
                lo
            };
            let insn = super::decode(raw);
            self.dcache.set(page, pc, insn);
            return Ok(insn);
        }
        self.finish_fetch(bus, pc, lo)
    }

    /// Decodes without caching, fetching the upper half through the MMU if needed (a
    /// 32-bit instruction that straddles a page boundary).
    fn finish_fetch(&mut self, bus: &mut Bus, pc: u64, lo: u32) -> Result<Insn, Exception> {
        if lo & 3 != 3 {
            return Ok(super::decode(lo));
        }
        let hi_va = pc.wrapping_add(2);
        let PageTarget::Memory(region, page) = self.lookup(bus, hi_va, Access::Fetch)?.target()
        else {
            return Err(Access::Fetch.access_fault(hi_va));
        };
        let hi = bus.region(region).read_sized(page + (hi_va & 0xfff), 2) as u32;
        Ok(super::decode(lo | (hi << 16)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u64) -> TlbEntry {
        TlbEntry {
            tag,
            delta: 0,
            region: Some(RegionId::RAM),
            frame: 0,
            inline_tag: tag,
        }
    }

    #[test]
    fn flush_clears_what_was_filled_whether_tracked_or_not() {
        for fills in [3, TLB_SIZE + 10] {
            let mut m = Mmu::new();
            for i in 0..fills {
                let (k, idx) = (i % 3, (i * 7) % TLB_SIZE);
                let access = [Access::Fetch, Access::Load, Access::Store][k];
                m.table_mut(access)[idx] = entry(1 << 63 | i as u64);
                m.note_filled(access, idx);
            }
            assert_eq!(m.filled.is_none(), fills > TLB_SIZE, "{fills} fills");
            m.flush();
            assert!(
                [&m.fetch, &m.load, &m.store]
                    .iter()
                    .all(|t| t.iter().all(|e| *e == EMPTY)),
                "{fills} fills"
            );
            assert_eq!(m.filled.as_ref().map(Vec::len), Some(0));
        }
    }
}
