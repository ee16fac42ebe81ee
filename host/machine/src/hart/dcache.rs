//! The decode cache: each RAM page that code runs from gets an array of decoded
//! instructions, one slot per halfword, filled on first execution.
//!
//! Stores to RAM invalidate exactly the slots whose instruction they may overlap (the
//! slot of each written halfword and the one before it), so self-modifying code and
//! program loaders need no `fence.i` to be seen — which is also the strongest behaviour
//! `fence.i` allows. Instructions that straddle a page are never cached. The pool of
//! decoded pages is bounded; when it is full everything is dropped and refilled on
//! demand (a cache: it never changes what the guest sees).

use super::Insn;
use std::sync::{Mutex, PoisonError};

/// Halfword slots per page.
pub(super) const SLOTS: usize = 2048;

/// [`BlockTable::entry`] of a slot no block was tried for yet.
pub(super) const BLOCK_UNKNOWN: u32 = 0;
/// [`BlockTable::entry`] of a slot whose first instruction the JIT does not translate.
pub(super) const BLOCK_NONE: u32 = 1;

/// The translated blocks of one decoded page (see [`super::jit`]), by the halfword slot
/// they start at. Translated code reads `entry` to chain to the next block, so it is
/// `repr(C)` and each table stays at one address for the life of the cache.
#[derive(Debug)]
#[repr(C)]
pub(super) struct BlockTable {
    /// [`BLOCK_UNKNOWN`], [`BLOCK_NONE`], or the block's offset in the code region.
    pub(super) entry: [u32; SLOTS],
    /// How many halfwords the block starting here covers (a store into them drops it).
    pub(super) span: [u8; SLOTS],
}

/// The halfword slot of `pc` in its page.
#[inline(always)]
fn slot(pc: u64) -> usize {
    ((pc & 0xfff) >> 1) as usize
}

impl BlockTable {
    fn clear(&mut self) {
        self.entry.fill(BLOCK_UNKNOWN);
        self.span.fill(0);
    }
}
const NONE: u32 = u32::MAX;
/// Most RAM pages decoded at once: 64 MiB of guest code (512 MiB of host memory at most).
/// A compiler's hot code is tens of MiB; a pool smaller than the working set turns every
/// page change into a refill, and drops the page's translated blocks with it. (The rustc
/// workload evicted 30 K pages from a pool of 8192 and translated 1.0 M blocks; with
/// 32768 it evicted none and translated 0.65 M; see docs/performance.md.)
const POOL_PAGES: usize = 16384;

/// One decoded page's buffers: its instructions and its block table (42 KiB).
type PageBuffers = (Box<[Insn; SLOTS]>, Box<BlockTable>);

/// Buffers of the caches dropped in this process, for the caches made after them to take
/// instead of new memory. New memory is zeroed by the host kernel on first touch and, on a
/// virtual host whose free memory goes back to the hypervisor, supplied by it page by page
/// too: a sibling machine decodes 7–10 K pages, and the first profile of a run with
/// sibling machines put 7 % of its time in the kernel zeroing these buffers. At most
/// [`POOL_PAGES`] are kept; a buffer taken is cleaned first, so a cache behaves the same
/// on either (a cache never changes what the guest sees anyway).
static SPARE: Spares = Mutex::new(Vec::new());

/// A pool of page buffers: [`SPARE`], or a test's own.
type Spares = Mutex<Vec<PageBuffers>>;

/// Buffers for one more decoded page: a dropped cache's from `spares`, cleaned, or new ones.
fn page_buffers(spares: &Spares) -> PageBuffers {
    let spare = spares.lock().unwrap_or_else(PoisonError::into_inner).pop();
    if let Some((mut insns, mut table)) = spare {
        insns.fill(Insn::UNDECODED);
        table.clear();
        return (insns, table);
    }
    // A fixed-size array (not a slice): the slot index is < SLOTS by construction, so the
    // fetch fast path carries no bounds check.
    let insns: Box<[Insn; SLOTS]> = vec![Insn::UNDECODED; SLOTS]
        .into_boxed_slice()
        .try_into()
        .expect("SLOTS entries");
    let table = Box::new(BlockTable {
        entry: [BLOCK_UNKNOWN; SLOTS],
        span: [0; SLOTS],
    });
    (insns, table)
}

/// Decoded instructions by RAM page.
#[derive(Debug)]
pub struct DecodeCache {
    /// For each RAM page, its index in `pages` or `NONE`.
    slot_of: Vec<u32>,
    /// Decoded pages.
    pages: Vec<Box<[Insn; SLOTS]>>,
    /// The RAM page each entry of `pages` holds, or `NONE` for a free (clean) entry.
    owner: Vec<u32>,
    /// Entries of `pages` that hold no RAM page (after a flush).
    free: Vec<u32>,
    /// The next entry to evict once the pool is full (round robin: deterministic, and it
    /// never throws away the whole working set at once).
    hand: usize,
    /// Translated blocks, one table per entry of `pages`.
    blocks: Vec<Box<BlockTable>>,
    /// Whether each table holds anything but [`BLOCK_UNKNOWN`] (saves clearing clean ones).
    has_blocks: Vec<bool>,
    /// The address of each table's entry array, for translated code that chains to a
    /// block in another page.
    table_addrs: Vec<u64>,
    /// Counts stores that reached a page with decoded code (see
    /// [`DecodeCache::code_writes`]).
    code_writes: u64,
    /// For each table, the in-page exits of its blocks to block starts not translated when
    /// they were: (target slot, code offset of the exit's `jmp`), patched to the target's
    /// code whenever a block is translated there (again). Dropped with the table.
    links: Vec<Vec<(u16, u32)>>,
    /// Code offsets of blocks a store dropped while other blocks of their page stay:
    /// those may jump to them directly, so the translator makes them leave
    /// ([`DecodeCache::take_dropped`]) before translated code runs again.
    dropped: Vec<u32>,
    /// Where buffers come from and go back to when the cache is dropped.
    spares: &'static Spares,
    /// Pages evicted to make room (feature `counters`).
    #[cfg(feature = "counters")]
    pub(super) evictions: u64,
}

impl DecodeCache {
    /// An empty cache for a RAM of `ram_length` bytes.
    pub fn new(ram_length: u64) -> Self {
        Self::with_spares(ram_length, &SPARE)
    }

    /// [`DecodeCache::new`], its buffers taken from and left to `spares`.
    fn with_spares(ram_length: u64, spares: &'static Spares) -> Self {
        Self {
            spares,
            slot_of: vec![NONE; ram_length.div_ceil(4096) as usize],
            pages: Vec::new(),
            owner: Vec::new(),
            free: Vec::new(),
            hand: 0,
            blocks: Vec::new(),
            has_blocks: Vec::new(),
            table_addrs: Vec::new(),
            links: Vec::new(),
            code_writes: 0,
            dropped: Vec::new(),
            #[cfg(feature = "counters")]
            evictions: 0,
        }
    }

    /// How many stores have reached a page with decoded code so far: when it has not
    /// moved across a step, no decoded instruction or block was dropped in it.
    pub(super) fn code_writes(&self) -> u64 {
        self.code_writes
    }

    /// Whether RAM page `ram_page` has a cache page (may hold decoded code).
    pub(super) fn holds(&self, ram_page: u64) -> bool {
        self.slot_of[ram_page as usize] != NONE
    }

    /// The cache page of RAM page `ram_page`, creating it (empty) if needed.
    ///
    /// Creating may evict another page; callers hold no cache-page index across this call
    /// except the one it returns (the fetch fast path re-tags itself with the result).
    pub fn page_for(&mut self, ram_page: u64) -> u32 {
        let slot = self.slot_of[ram_page as usize];
        if slot != NONE {
            return slot;
        }
        let i = if let Some(free) = self.free.pop() {
            free as usize
        } else if self.pages.len() < POOL_PAGES {
            let (insns, table) = page_buffers(self.spares);
            self.pages.push(insns);
            self.owner.push(NONE);
            self.blocks.push(table);
            self.has_blocks.push(false);
            self.links.push(Vec::new());
            let table = self.blocks.last().expect("just pushed");
            self.table_addrs.push(table.entry.as_ptr() as u64);
            self.pages.len() - 1
        } else {
            #[cfg(feature = "counters")]
            {
                self.evictions += 1;
            }
            let victim = self.hand;
            self.hand = (self.hand + 1) % POOL_PAGES;
            self.slot_of[self.owner[victim] as usize] = NONE;
            self.pages[victim].fill(Insn::UNDECODED);
            self.clear_blocks(victim);
            victim
        };
        self.owner[i] = ram_page as u32;
        self.slot_of[ram_page as usize] = i as u32;
        i as u32
    }

    /// The slot of `pc` in cache page `page`.
    #[inline(always)]
    pub fn get(&self, page: u32, pc: u64) -> Insn {
        self.pages[page as usize][slot(pc)]
    }

    /// Fills the slot of `pc` in cache page `page`.
    #[inline(always)]
    pub fn set(&mut self, page: u32, pc: u64, insn: Insn) {
        self.pages[page as usize][slot(pc)] = insn;
    }

    /// Forgets decoded instructions that a store of `size` bytes at RAM offset `off` may
    /// have changed.
    #[inline(always)]
    pub fn invalidate(&mut self, off: u64, size: u32) {
        let slot = self.slot_of[(off >> 12) as usize];
        if slot != NONE {
            self.invalidate_in(slot, off, size);
        }
    }

    #[inline(never)]
    fn invalidate_in(&mut self, slot: u32, off: u64, size: u32) {
        self.code_writes = self.code_writes.wrapping_add(1);
        let page = &mut self.pages[slot as usize];
        let first = ((off & 0xfff) >> 1).saturating_sub(1) as usize;
        let last = (((off & 0xfff) + size as u64 - 1) >> 1).min(SLOTS as u64 - 1) as usize;
        page[first..=last].fill(Insn::UNDECODED);
        // A store that runs into the next page (byte-wise misaligned stores do not) is
        // handled by the caller's per-page stores.
        if self.has_blocks[slot as usize] {
            // Drop every block whose halfwords the store wrote: those starting at most
            // 255 halfwords (the longest span) before the first written one.
            let table = &mut self.blocks[slot as usize];
            let first = ((off & 0xfff) >> 1) as usize;
            for s in first.saturating_sub(255)..=last {
                if s + table.span[s] as usize > first {
                    if table.entry[s] > BLOCK_NONE {
                        self.dropped.push(table.entry[s]);
                    }
                    table.entry[s] = BLOCK_UNKNOWN;
                    table.span[s] = 0;
                }
            }
        }
    }

    /// The block entry of `pc` in cache page `page`.
    #[inline(always)]
    pub(super) fn block(&self, page: u32, pc: u64) -> u32 {
        self.blocks[page as usize].entry[slot(pc)]
    }

    /// Counts a visit to the block start `pc` (not translated yet) in cache page `page`;
    /// returns whether it has had `hot` of them. Until translated, a slot's `span` is its
    /// visit count.
    pub(super) fn visit(&mut self, page: u32, pc: u64, hot: u8) -> bool {
        let table = &mut self.blocks[page as usize];
        let s = slot(pc);
        table.span[s] = table.span[s].saturating_add(1);
        self.has_blocks[page as usize] = true;
        table.span[s] >= hot
    }

    /// Records the block (or [`BLOCK_NONE`]) starting at `pc` in cache page `page`.
    pub(super) fn set_block(&mut self, page: u32, pc: u64, entry: u32, span: u8) {
        let table = &mut self.blocks[page as usize];
        let s = slot(pc);
        table.entry[s] = entry;
        table.span[s] = span;
        self.has_blocks[page as usize] = true;
    }

    /// The block entries of cache page `page` (the array stays at one address while the
    /// cache lives).
    pub(super) fn block_entries(&self, page: u32) -> &[u32] {
        &self.blocks[page as usize].entry
    }

    /// The code offsets of blocks dropped by stores since the last call (see
    /// `dropped`); none after the code region starts over ([`DecodeCache::flush_blocks`]).
    pub(super) fn take_dropped(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.dropped)
    }

    /// The address of the table addresses (`u64` per cache page; valid until a page is
    /// added to the pool).
    pub(super) fn table_addrs_addr(&self) -> u64 {
        self.table_addrs.as_ptr() as u64
    }

    /// The RAM page that cache page `page` holds.
    pub(super) fn ram_page(&self, page: u32) -> u64 {
        self.owner[page as usize] as u64
    }

    /// The page-to-cache map, for translated code (a store to a page with decoded code
    /// leaves translated code so that the caches see it).
    pub(super) fn slot_of_addr(&self) -> u64 {
        self.slot_of.as_ptr() as u64
    }

    fn clear_blocks(&mut self, i: usize) {
        if self.has_blocks[i] {
            self.blocks[i].clear();
            self.has_blocks[i] = false;
        }
        self.links[i].clear();
    }

    /// Records the exits of the block placed at code offset `at` in cache page `page`
    /// that wait for a block at another slot of the page: `(slot, offset in the block)`.
    /// A page's list is kept in slot order, so that [`DecodeCache::links_to`] finds a
    /// slot's links without reading the rest (a page's list only grows until the page
    /// is dropped: links stay after they are patched, for a block translated again).
    pub(super) fn add_links(&mut self, page: u32, at: u32, links: &[(u16, u32)]) {
        let list = &mut self.links[page as usize];
        for &(slot, off) in links {
            let i = list.partition_point(|l| l.0 <= slot);
            list.insert(i, (slot, at + off));
        }
    }

    /// The code offsets of the exits of cache page `page` that go to the block at `pc`.
    pub(super) fn links_to(&self, page: u32, pc: u64) -> impl Iterator<Item = u32> + '_ {
        let s = slot(pc) as u16;
        let list = &self.links[page as usize];
        let first = list.partition_point(|l| l.0 < s);
        (list[first..].iter())
            .take_while(move |l| l.0 == s)
            .map(|l| l.1)
    }

    /// Forgets every translated block (the code region was reset), keeping decoded pages.
    pub(super) fn flush_blocks(&mut self) {
        self.dropped.clear();
        for i in 0..self.blocks.len() {
            self.clear_blocks(i);
        }
    }

    /// Drops everything (the pool's buffers are kept, cleaned, for reuse).
    pub fn flush(&mut self) {
        for (i, owner) in self.owner.iter_mut().enumerate() {
            if *owner != NONE {
                self.slot_of[*owner as usize] = NONE;
                self.pages[i].fill(Insn::UNDECODED);
                *owner = NONE;
            }
        }
        self.flush_blocks();
        // Hand entries out again in index order, so the pool refills as it first filled.
        self.free = (0..self.owner.len() as u32).rev().collect();
        self.hand = 0;
    }
}

impl Drop for DecodeCache {
    /// Leaves the buffers to the caches made after this one ([`SPARE`]).
    fn drop(&mut self) {
        let mut spare = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
        let room = POOL_PAGES.saturating_sub(spare.len());
        let buffers = self.pages.drain(..).zip(self.blocks.drain(..));
        spare.extend(buffers.take(room));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode, Op};
    use super::*;

    #[test]
    fn stores_invalidate_overlapping_slots_only() {
        let mut c = DecodeCache::new(16 * 4096);
        let p = c.page_for(3);
        let addi = decode(0x0010_0093); // addi x1, x0, 1
        for pc in [0x100u64, 0x102, 0x104, 0x108] {
            c.set(p, pc, addi);
        }
        c.invalidate(3 * 4096 + 0x104, 1);
        assert_eq!(c.get(p, 0x100).op, addi.op);
        assert_eq!(c.get(p, 0x102).op, Op::Undecoded);
        assert_eq!(c.get(p, 0x104).op, Op::Undecoded);
        assert_eq!(c.get(p, 0x108).op, addi.op);
        // Stores to pages without code do nothing.
        c.invalidate(5 * 4096, 8);
        assert_eq!(c.get(p, 0x100).op, addi.op);
    }

    #[test]
    fn a_full_pool_evicts_one_page_at_a_time() {
        let mut c = DecodeCache::new((POOL_PAGES as u64 + 8) * 4096);
        let addi = decode(0x0010_0093);
        for page in 0..POOL_PAGES as u64 {
            let p = c.page_for(page);
            c.set(p, 0, addi);
        }
        // One more page evicts the oldest only; the rest stay decoded.
        let q = c.page_for(POOL_PAGES as u64);
        assert_eq!(c.get(q, 0).op, Op::Undecoded);
        assert_eq!(c.slot_of[0], NONE);
        let p1 = c.page_for(1);
        assert_eq!(c.get(p1, 0).op, addi.op);
    }

    /// A cache made after another was dropped takes that cache's buffers, not new memory,
    /// and they hold nothing of it: no decoded instruction, no block, no visit count, no
    /// link.
    #[test]
    fn a_new_cache_takes_a_dropped_one_s_buffers_clean() {
        let spares: &'static Spares = Box::leak(Box::default());
        let addi = decode(0x0010_0093);
        let mut first = DecodeCache::with_spares(16 * 4096, spares);
        let mut buffers = Vec::new();
        for ram_page in [2, 5, 9] {
            let p = first.page_for(ram_page);
            for pc in (0..4096).step_by(2) {
                first.set(p, pc, addi);
                first.set_block(p, pc, 77, 3);
            }
            first.visit(p, 0x10, 8);
            first.add_links(p, 64, &[(4, 1), (9, 2)]);
            buffers.push(first.pages[p as usize].as_ptr() as usize);
        }
        drop(first);
        assert_eq!(spares.lock().unwrap().len(), 3);
        let mut second = DecodeCache::with_spares(16 * 4096, spares);
        let mut taken = Vec::new();
        for ram_page in [1, 2, 7, 11] {
            let p = second.page_for(ram_page);
            taken.push(second.pages[p as usize].as_ptr() as usize);
            for pc in (0..4096).step_by(2) {
                assert_eq!(
                    second.get(p, pc).op,
                    Op::Undecoded,
                    "page {ram_page}, pc {pc}"
                );
                assert_eq!(second.block(p, pc), BLOCK_UNKNOWN);
            }
            assert!(second.blocks[p as usize].span.iter().all(|&s| s == 0));
            assert_eq!(second.links_to(p, 4).count(), 0);
        }
        buffers.sort_unstable();
        let mut reused = taken[..3].to_vec();
        reused.sort_unstable();
        assert_eq!(
            reused, buffers,
            "the dropped cache's three pages, taken again"
        );
        assert!(!buffers.contains(&taken[3]), "a fourth page is new memory");
    }

    /// A page's links to one slot are found among many, whatever order its blocks
    /// recorded them in, and no other slot's or page's.
    #[test]
    fn links_to_finds_exactly_the_links_of_one_slot() {
        let mut c = DecodeCache::new(16 * 4096);
        let p = c.page_for(3);
        let q = c.page_for(4);
        c.add_links(p, 1000, &[(7, 1), (2, 2), (7, 3)]);
        c.add_links(q, 500, &[(7, 9)]);
        c.add_links(p, 2000, &[(9, 4), (2, 5)]);
        c.add_links(p, 3000, &[(7, 6), (0, 7), (2047, 8)]);
        let to = |page: u32, slot: u64| {
            let mut v: Vec<u32> = c.links_to(page, 0x8000_1000 + slot * 2).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(to(p, 7), [1001, 1003, 3006]);
        assert_eq!(to(p, 2), [1002, 2005]);
        assert_eq!(to(p, 9), [2004]);
        assert_eq!(to(p, 0), [3007]);
        assert_eq!(to(p, 2047), [3008]);
        assert_eq!(to(q, 7), [509]);
        for empty in [1, 3, 8, 10, 2046] {
            assert!(to(p, empty).is_empty(), "slot {empty}");
        }
    }

    #[test]
    fn flush_forgets_pages_and_reuses_buffers() {
        let mut c = DecodeCache::new(16 * 4096);
        let p = c.page_for(1);
        c.set(p, 0, decode(0x0010_0093));
        c.flush();
        let q = c.page_for(2);
        assert_eq!(q, p);
        assert_eq!(c.get(q, 0).op, Op::Undecoded);
        assert_eq!(c.page_for(2), q);
        assert_ne!(c.page_for(1), q);
    }
}
