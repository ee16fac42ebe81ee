//! Memory ranges (RAM and flash drives): plain bytes plus a bitmap of dirty 4 KiB pages.
//!
//! The state hash rehashes only the pages written since it last looked, so every store
//! that reaches a range marks its page here (one bit per page).

/// Size of the pages the dirty bitmap (and the state hash) works with.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// A contiguous range of guest-physical memory backed by host bytes.
#[derive(Debug)]
pub struct MemRange {
    /// Guest-physical address of the first byte.
    pub start: u64,
    data: HostBytes,
    /// One bit per page: written since the last [`MemRange::clear_dirty`].
    dirty: Vec<u64>,
}

/// Host memory that a caller supplies for a range instead of memory from the allocator: a
/// copy-on-write mapping of a file the range starts out as (cmbuild maps a read-only drive's
/// image this way, so that a machine starts without copying gigabytes). The machine reads
/// and writes it like any other range; it never does I/O through it.
///
/// # Safety
/// [`HostMemory::as_ptr`] returns the same non-null pointer on every call, valid for reads
/// and writes of [`HostMemory::length`] bytes (all initialised) for as long as the object
/// lives; nothing else reads or writes those bytes while it lives (a private mapping: the
/// file underneath is not written through it); the length is a whole number of pages.
pub unsafe trait HostMemory: Send + Sync + std::fmt::Debug {
    /// The first byte.
    fn as_ptr(&self) -> *mut u8;
    /// Bytes from [`HostMemory::as_ptr`], a multiple of [`PAGE_SIZE`].
    fn length(&self) -> usize;
}

/// Where a range's bytes live. Only held (the bytes are reached through [`HostBytes::ptr`]):
/// dropping it frees them.
#[derive(Debug)]
#[allow(dead_code)]
enum Storage {
    /// From the allocator.
    Owned(Vec<u8>),
    /// Supplied by the caller.
    Supplied(Box<dyn HostMemory>),
}

/// A range's bytes: a pointer and length taken once from their [`Storage`], which owns them.
#[derive(Debug)]
struct HostBytes {
    ptr: *mut u8,
    len: usize,
    storage: Storage,
}

// SAFETY: the storage owns the bytes (a `Vec`, or a `HostMemory`, which is `Send` and whose
// bytes nothing else touches), and `ptr` only ever points into them.
unsafe impl Send for HostBytes {}
// SAFETY: a shared `HostBytes` only reads through `ptr` (writes need `&mut`), and the storage
// is `Sync`.
unsafe impl Sync for HostBytes {}

impl HostBytes {
    fn owned(mut data: Vec<u8>) -> Self {
        Self {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            storage: Storage::Owned(data),
        }
    }

    fn supplied(memory: Box<dyn HostMemory>) -> Self {
        Self {
            ptr: memory.as_ptr(),
            len: memory.length(),
            storage: Storage::Supplied(memory),
        }
    }

    #[inline(always)]
    fn slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for reads of `len` initialised bytes while the storage
        // lives (a `Vec`'s buffer never moves while it is not touched, and a `HostMemory`
        // promises it), and `&self` borrows the storage.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    #[inline(always)]
    fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `slice`, and `&mut self` makes this the only access to the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Clone for MemRange {
    /// A copy in memory from the allocator, whatever the original's storage.
    fn clone(&self) -> Self {
        Self {
            start: self.start,
            data: HostBytes::owned(self.data.slice().to_vec()),
            dirty: self.dirty.clone(),
        }
    }
}

impl PartialEq for MemRange {
    fn eq(&self, other: &Self) -> bool {
        self.start == other.start
            && self.dirty == other.dirty
            && self.data.slice() == other.data.slice()
    }
}

impl Eq for MemRange {}

/// Asks the host kernel to back `bytes` with huge pages where it can: guest accesses are
/// spread over gigabytes, and 4 KiB host pages make nearly every one a host TLB miss.
/// Only a hint (the contents and the machine's behaviour are the same either way).
fn advise_huge_pages(bytes: &mut [u8]) {
    advise_page_size(bytes, true);
}

/// Asks for huge pages (`huge`) or for small ones over the whole 2 MiB pages inside
/// `bytes`. Only a hint.
#[cfg(target_os = "linux")]
fn advise_page_size(bytes: &mut [u8], huge: bool) {
    const HUGE: usize = 2 << 20;
    let start = (bytes.as_mut_ptr() as usize).next_multiple_of(HUGE);
    let end = (bytes.as_mut_ptr() as usize + bytes.len()) / HUGE * HUGE;
    let advice = if huge {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    if end > start {
        // SAFETY: [start, end) lies inside `bytes`, which this call borrows mutably;
        // MADV_HUGEPAGE and MADV_NOHUGEPAGE change how the kernel backs the range, never
        // its contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, advice);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_page_size(_bytes: &mut [u8], _huge: bool) {}

/// `len` zero bytes from the allocator's zeroed memory (untouched pages stay unbacked), or
/// `None` if the allocation fails.
fn try_zeroed(len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(len).ok()?;
    // SAFETY: `layout` has a nonzero size (len > 0 was checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` comes from the global allocator with `layout` (size `len`, alignment 1,
    // which is `u8`'s), all `len` bytes are initialised (zeroed), and the capacity given is
    // the allocated size, as `Vec::from_raw_parts` requires.
    Some(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

impl MemRange {
    /// A zero-filled range of `length` bytes (rounded up to whole pages) at `start`.
    pub fn new(start: u64, length: u64) -> Self {
        let length = length.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // `vec!` of zeros asks the allocator for zeroed memory: nothing is written.
        Self::with_data(start, vec![0; length as usize])
    }

    /// [`MemRange::new`], but `None` instead of aborting the process when the host cannot
    /// give that much memory (sizes read from untrusted input, such as a snapshot).
    pub fn try_new(start: u64, length: u64) -> Option<Self> {
        let length = usize::try_from(length.checked_next_multiple_of(PAGE_SIZE)?).ok()?;
        Some(Self::with_data(start, try_zeroed(length)?))
    }

    /// A range at `start` holding `data` followed by zeros up to `length` bytes (rounded
    /// up to whole pages; never less than `data`), without copying `data`.
    pub fn from_vec(start: u64, mut data: Vec<u8>, length: u64) -> Self {
        let length = length.max(data.len() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        data.resize(length as usize, 0);
        Self::with_data(start, data)
    }

    /// Runs `f` on the range with its memory (if the range owns it) backed by small pages,
    /// then asks for huge pages again: for writing a few pages spread over a large range
    /// (a snapshot's RAM), where the kernel would otherwise zero 2 MiB for every page
    /// written, and stall compacting memory to find them. Only a hint to the kernel.
    pub(crate) fn with_small_pages<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let owned = matches!(self.data.storage, Storage::Owned(_));
        if owned {
            advise_page_size(self.data.slice_mut(), false);
        }
        let result = f(self);
        if owned {
            advise_page_size(self.data.slice_mut(), true);
        }
        result
    }

    /// A range of `data` (a whole number of pages), every page dirty.
    fn with_data(start: u64, mut data: Vec<u8>) -> Self {
        advise_huge_pages(&mut data);
        Self::with_bytes(start, HostBytes::owned(data))
    }

    fn with_bytes(start: u64, data: HostBytes) -> Self {
        let pages = data.len >> PAGE_SHIFT;
        Self {
            start,
            data,
            dirty: vec![!0; pages.div_ceil(64)],
        }
    }

    /// A range at `start` over host memory the caller supplies (its bytes are the range's
    /// contents as they are), every page dirty; `None` if its length is not a whole number
    /// of pages.
    pub fn from_host_memory(start: u64, memory: Box<dyn HostMemory>) -> Option<Self> {
        if memory.length() as u64 % PAGE_SIZE != 0 {
            return None;
        }
        Some(Self::with_bytes(start, HostBytes::supplied(memory)))
    }

    /// Whether the bytes are host memory the caller supplied
    /// ([`MemRange::from_host_memory`]) rather than the allocator's.
    pub fn is_supplied(&self) -> bool {
        matches!(self.data.storage, Storage::Supplied(_))
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.data.len as u64
    }

    /// True for a range of no bytes.
    pub fn is_empty(&self) -> bool {
        self.data.len == 0
    }

    /// Whether the guest-physical address `pa` lies inside the range.
    #[inline(always)]
    pub fn contains(&self, pa: u64) -> bool {
        pa.wrapping_sub(self.start) < self.len()
    }

    /// The bytes, read-only.
    #[inline(always)]
    pub fn bytes(&self) -> &[u8] {
        self.data.slice()
    }

    /// The host address of the first byte, which TLB entries hold for translated code to
    /// load and store through (see `hart::jit`, which reaches the bytes only while the
    /// range is borrowed mutably). It stays the same until the range is dropped: the bytes
    /// never move. Translated code marks no page dirty: it stores only into pages already
    /// marked ([`MemRange::mark_dirty`] when a store-TLB entry allows it).
    pub(crate) fn host_addr(&self) -> u64 {
        self.data.ptr as u64
    }

    /// Writes `bytes` at `offset` (from the start of the range), marking pages dirty.
    /// Returns false (and writes nothing) when they do not fit.
    pub fn write_bytes(&mut self, offset: u64, bytes: &[u8]) -> bool {
        let Some(end) = offset.checked_add(bytes.len() as u64) else {
            return false;
        };
        if end > self.len() {
            return false;
        }
        self.data.slice_mut()[offset as usize..end as usize].copy_from_slice(bytes);
        let mut page = offset >> PAGE_SHIFT;
        while page << PAGE_SHIFT < end {
            self.mark_dirty(page);
            page += 1;
        }
        true
    }

    /// Copies `bytes` to the start of a range that is still all zeros (as [`MemRange::new`]
    /// made it), skipping the pages of `bytes` that are zero too: they already read as
    /// zero, and leaving them untouched spares the host from backing them (a drive of
    /// zeros, or an image's holes, costs no memory until the guest writes there). Returns
    /// false (and copies nothing) when `bytes` does not fit.
    pub fn fill_fresh(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() as u64 > self.len() {
            return false;
        }
        for (i, chunk) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
            if !crate::merkle::is_zero(chunk) {
                let at = i * PAGE_SIZE as usize;
                self.data.slice_mut()[at..at + chunk.len()].copy_from_slice(chunk);
            }
        }
        // Every page of a new range is dirty already.
        true
    }

    /// Reads `N` little-endian bytes at `offset`; the caller checked the bounds' page.
    #[inline(always)]
    pub fn read<const N: usize>(&self, offset: u64) -> [u8; N] {
        let o = offset as usize;
        self.data.slice()[o..o + N].try_into().expect("N bytes")
    }

    /// Writes `N` bytes at `offset` and marks the page dirty.
    #[inline(always)]
    pub fn write<const N: usize>(&mut self, offset: u64, value: [u8; N]) {
        let o = offset as usize;
        self.data.slice_mut()[o..o + N].copy_from_slice(&value);
        self.mark_dirty(offset >> PAGE_SHIFT);
    }

    /// Reads a little-endian value of `size` bytes (1, 2, 4 or 8) at `offset`.
    #[inline(always)]
    pub fn read_sized(&self, offset: u64, size: u32) -> u64 {
        match size {
            1 => self.data.slice()[offset as usize] as u64,
            2 => u16::from_le_bytes(self.read(offset)) as u64,
            4 => u32::from_le_bytes(self.read(offset)) as u64,
            _ => u64::from_le_bytes(self.read(offset)),
        }
    }

    /// Writes the low `size` bytes (1, 2, 4 or 8) of `value` at `offset`.
    #[inline(always)]
    pub fn write_sized(&mut self, offset: u64, size: u32, value: u64) {
        match size {
            1 => self.write(offset, [value as u8]),
            2 => self.write(offset, (value as u16).to_le_bytes()),
            4 => self.write(offset, (value as u32).to_le_bytes()),
            _ => self.write(offset, value.to_le_bytes()),
        }
    }

    /// Marks page `page` dirty, as every store does; also ahead of stores that will not
    /// mark it (translated code's; see `hart::mmu`). A page marked dirty and not written
    /// is only hashed again, to the same value.
    #[inline(always)]
    pub(crate) fn mark_dirty(&mut self, page: u64) {
        self.dirty[(page >> 6) as usize] |= 1 << (page & 63);
    }

    /// Whether page `page` (index from the start of the range) was written since the last
    /// [`MemRange::clear_dirty`]. A new range has every page dirty.
    pub fn is_dirty(&self, page: u64) -> bool {
        self.dirty[(page >> 6) as usize] >> (page & 63) & 1 != 0
    }

    /// Indices of the dirty pages, in increasing order.
    pub fn dirty_pages(&self) -> impl Iterator<Item = u64> + '_ {
        let pages = self.len() >> PAGE_SHIFT;
        (0..pages).filter(move |&p| self.is_dirty(p))
    }

    /// Forgets which pages were written (after the state hash has caught up).
    pub fn clear_dirty(&mut self) {
        self.dirty.iter_mut().for_each(|w| *w = 0);
    }

    /// Marks every page dirty (after a wholesale change such as loading a snapshot).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.iter_mut().for_each(|w| *w = !0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_new_gives_zeroed_pages_or_none() {
        let m = MemRange::try_new(0x8000_0000, 3 * PAGE_SIZE + 1).unwrap();
        assert_eq!(m.len(), 4 * PAGE_SIZE);
        assert!(m.bytes().iter().all(|&b| b == 0));
        assert_eq!(m, MemRange::new(0x8000_0000, 4 * PAGE_SIZE));
        assert!(MemRange::try_new(0, 0).is_some_and(|m| m.is_empty()));
        // More than any address space: refused, not an abort.
        assert!(MemRange::try_new(0, u64::MAX - 5).is_none());
        assert!(MemRange::try_new(0, 1 << 62).is_none());
    }

    #[test]
    fn from_vec_pads_with_zeros_and_matches_a_filled_range() {
        let image: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        let owned = MemRange::from_vec(0x2000, image.clone(), 3 * PAGE_SIZE);
        let mut copied = MemRange::new(0x2000, 3 * PAGE_SIZE);
        assert!(copied.fill_fresh(&image));
        assert_eq!(owned, copied);
        assert_eq!(owned.len(), 3 * PAGE_SIZE);
        // Never shorter than the data.
        assert_eq!(MemRange::from_vec(0, image, 1).len(), 2 * PAGE_SIZE);
    }

    #[test]
    fn fill_fresh_copies_what_is_not_zero() {
        let mut m = MemRange::new(0x1000, 4 * PAGE_SIZE);
        let mut image = vec![0u8; 3 * PAGE_SIZE as usize + 5];
        image[10] = 1;
        image[2 * PAGE_SIZE as usize + 7] = 2;
        image[3 * PAGE_SIZE as usize + 4] = 3;
        assert!(m.fill_fresh(&image));
        assert_eq!(&m.bytes()[..image.len()], &image[..]);
        assert!(m.bytes()[image.len()..].iter().all(|&b| b == 0));
        assert!(!m.fill_fresh(&vec![1; 4 * PAGE_SIZE as usize + 1]));
    }

    #[test]
    fn stores_mark_only_their_page_dirty() {
        let mut m = MemRange::new(0x8000_0000, 5 * PAGE_SIZE);
        m.clear_dirty();
        m.write_sized(2 * PAGE_SIZE + 8, 8, 0x1122_3344_5566_7788);
        assert_eq!(m.dirty_pages().collect::<Vec<_>>(), vec![2]);
        assert_eq!(m.read_sized(2 * PAGE_SIZE + 8, 4), 0x5566_7788);
        assert!(m.write_bytes(PAGE_SIZE - 1, &[1, 2]));
        assert_eq!(m.dirty_pages().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(!m.write_bytes(5 * PAGE_SIZE - 1, &[1, 2]));
    }

    #[test]
    fn length_rounds_up_to_pages_and_contains_checks_bounds() {
        let m = MemRange::new(0x1000, 1);
        assert_eq!(m.len(), PAGE_SIZE);
        assert!(m.contains(0x1000) && m.contains(0x1fff));
        assert!(!m.contains(0xfff) && !m.contains(0x2000));
    }
}
