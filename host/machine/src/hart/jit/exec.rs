//! The executable code region: one shared anonymous memory object mapped twice, read+execute where
//! code runs and read+write where blocks are copied in, so that no page is ever both
//! writable and executable at one address (W^X) and placing a block needs no system call.
//! The entry trampoline, the shared epilogue and the code blocks share sit at its start;
//! blocks fill the rest of the first half, their slow paths the second.

#[cfg(all(feature = "jit", target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use super::super::x86::*;
    use crate::hart::Hart;
    use std::ptr::NonNull;

    /// Whether this build can translate.
    pub const AVAILABLE: bool = true;

    /// How translated code is entered: `run(hart, block)`.
    pub type EntryFn = unsafe extern "sysv64" fn(*mut Hart, *const u8);

    /// Registers translated code may change that the C ABI asks callees to preserve.
    const SAVED: [u8; 6] = [RBX, RBP, R12, R13, R14, R15];

    /// An executable mapping, its writable twin, and the bytes placed in them so far.
    pub struct ExecMem {
        /// The read+execute view.
        base: NonNull<u8>,
        /// The read+write view of the same memory.
        write: NonNull<u8>,
        size: usize,
        /// Bytes in use (placements are 16-byte aligned) of the hot half: blocks' inline
        /// paths, which run.
        used: usize,
        /// Where the cold half starts: blocks' slow paths (helper calls, exits to the
        /// interpreter), kept apart so that the code that runs packs densely.
        cold_start: usize,
        /// The end of what is in use in the cold half.
        cold_used: usize,
        /// Bytes taken by the trampoline, the epilogue and the shared code, which survive
        /// [`ExecMem::reset`].
        fixed: usize,
        /// Offset of the shared epilogue.
        epilogue: usize,
        /// Offset right after the epilogue.
        epilogue_end: usize,
        /// Shared code placed after the epilogue ([`ExecMem::place_shared`]): (start,
        /// end, name).
        shared: Vec<(usize, usize, &'static str)>,
    }

    // SAFETY: the mappings are owned by this value alone (nothing else holds their
    // addresses except code inside them and block tables of the same hart), so moving it
    // to another thread moves all of its users with it.
    unsafe impl Send for ExecMem {}

    impl std::fmt::Debug for ExecMem {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ExecMem")
                .field("size", &self.size)
                .field("used", &self.used)
                .finish()
        }
    }

    /// Maps `size` bytes of new shared anonymous memory read+write, or `None`.
    fn map_shared_anonymous(size: usize) -> Option<NonNull<u8>> {
        // SAFETY: a new anonymous mapping at an address the kernel picks touches no
        // existing memory; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        NonNull::new(p.cast())
    }

    impl ExecMem {
        /// Maps `size` bytes twice and places the trampoline (ending with `enter`, which
        /// loads what every block expects in registers) and the epilogue (starting with
        /// `leave`, which stores it back); `None` if the host refuses (then the hart
        /// interprets).
        pub fn new(size: usize, enter: fn(&mut Asm), leave: fn(&mut Asm)) -> Option<Self> {
            // One shared anonymous object (which the kernel names `/dev/zero`, so that
            // profilers take it for anonymous memory and name its code through
            // `/tmp/perf-PID.map`; a memfd would be taken for a file), mapped read+write,
            // then mapped a second time by `mremap` and made read+execute there.
            let write = map_shared_anonymous(size)?;
            // SAFETY: an old size of 0 asks for a second mapping of the same shared
            // pages at an address the kernel picks; nothing existing is touched.
            let twin =
                unsafe { libc::mremap(write.as_ptr().cast(), 0, size, libc::MREMAP_MAYMOVE) };
            // SAFETY: `twin`, if mapped, is the mapping just made, of `size` bytes.
            let exec = twin != libc::MAP_FAILED
                && unsafe { libc::mprotect(twin, size, libc::PROT_READ | libc::PROT_EXEC) } == 0;
            let base = NonNull::new(twin.cast::<u8>()).filter(|_| exec);
            let Some(base) = base else {
                // SAFETY: both are mappings made here of `size` bytes, unused so far.
                unsafe {
                    if twin != libc::MAP_FAILED {
                        libc::munmap(twin, size);
                    }
                    libc::munmap(write.as_ptr().cast(), size);
                }
                return None;
            };
            let mut mem = Self {
                base,
                write,
                size,
                used: 0,
                cold_start: (size / 2).next_multiple_of(16),
                cold_used: (size / 2).next_multiple_of(16),
                fixed: 0,
                epilogue: 0,
                epilogue_end: 0,
                shared: Vec::new(),
            };
            // Entry: save what the ABI wants kept, hart pointer in rbx, `enter` (which may
            // use any register but rax, and may offset rbx), jump to the block. The
            // epilogue runs `leave` first (rbx as `enter` left it).
            let mut a = Asm::new(0);
            for r in SAVED {
                a.push(r);
            }
            a.mov_rr(RBX, RDI);
            a.mov_rr(RAX, RSI);
            enter(&mut a);
            a.jmp_reg(RAX);
            let epilogue = a.here();
            leave(&mut a);
            for r in SAVED.iter().rev() {
                a.pop(*r);
            }
            a.ret();
            mem.epilogue_end = a.here();
            mem.place(&a.buf)?;
            mem.epilogue = epilogue;
            mem.fixed = mem.used;
            Some(mem)
        }

        /// The trampoline, as a function.
        pub fn entry_fn(&self) -> EntryFn {
            // SAFETY: offset 0 holds the trampoline written by `new`, which follows the
            // sysv64 convention for this signature (arguments in rdi and rsi, callee-saved
            // registers restored by the epilogue before `ret`).
            unsafe { std::mem::transmute::<*const u8, EntryFn>(self.base.as_ptr()) }
        }

        /// Host address of region offset `off`.
        pub fn addr(&self, off: usize) -> *const u8 {
            self.base.as_ptr().wrapping_add(off)
        }

        /// Host address of the region's start.
        pub fn base_addr(&self) -> u64 {
            self.base.as_ptr() as u64
        }

        /// The region's size in bytes.
        pub fn size(&self) -> usize {
            self.size
        }

        /// Where the next placement will go.
        pub fn next(&self) -> usize {
            self.used
        }

        /// Places code that stays, like the trampoline, through every
        /// [`ExecMem::reset`]: code blocks share, emitted for offset [`ExecMem::next`]
        /// with its pieces named by `symbols` (start, end, name). Only before any block.
        pub fn place_shared(
            &mut self,
            code: &[u8],
            symbols: Vec<(usize, usize, &'static str)>,
        ) -> Option<usize> {
            assert_eq!(self.used, self.fixed, "shared code goes before every block");
            let at = self.place(code)?;
            self.fixed = self.used;
            self.shared.extend(symbols);
            Some(at)
        }

        /// Symbols for the trampoline, the epilogue and the shared code, at host address
        /// `base`.
        pub fn fixed_symbols(&self, base: u64) -> Vec<super::super::CodeSymbol> {
            use super::super::{CodeKind, CodeSymbol};
            let shared = self.shared.iter().map(|&(start, end, name)| CodeSymbol {
                start: base + start as u64,
                size: (end - start) as u64,
                what: CodeKind::Shared(name),
            });
            let mut fixed = vec![
                CodeSymbol {
                    start: base,
                    size: self.epilogue as u64,
                    what: CodeKind::Entry,
                },
                CodeSymbol {
                    start: base + self.epilogue as u64,
                    size: (self.epilogue_end - self.epilogue) as u64,
                    what: CodeKind::Exit,
                },
            ];
            fixed.extend(shared);
            fixed
        }

        /// Offset of the shared epilogue (restores registers and returns to Rust).
        pub fn epilogue(&self) -> usize {
            self.epilogue
        }

        /// Where the next cold placement will go.
        pub fn next_cold(&self) -> usize {
            self.cold_used
        }

        /// Whether `hot` more bytes fit in the hot half and `cold` in the cold one.
        pub fn fits(&self, hot: usize, cold: usize) -> bool {
            self.used + hot <= self.cold_start && self.cold_used + cold <= self.size
        }

        /// Drops every placed block (the trampoline stays).
        pub fn reset(&mut self) {
            self.used = self.fixed;
            self.cold_used = self.cold_start;
        }

        /// Overwrites the 5 bytes at `at`, inside a placed block, with a jump to `target`
        /// (both region offsets): a dropped block's start made to leave, or an exit
        /// pointed at a block translated after it.
        pub fn patch_jump(&mut self, at: usize, target: usize) {
            let rel = (target as i64 - (at as i64 + 5)) as i32;
            let mut jump = [0xe9, 0, 0, 0, 0];
            jump[1..].copy_from_slice(&rel.to_le_bytes());
            // Every block is longer than 5 bytes (its entry check alone is).
            assert!(
                at >= self.fixed && at + jump.len() <= self.used,
                "a placed block"
            );
            self.write_at(at, &jump);
        }

        /// Copies `bytes` to region offset `at` through the writable view.
        fn write_at(&mut self, at: usize, bytes: &[u8]) {
            assert!(at + bytes.len() <= self.size, "inside the region");
            // SAFETY: [at, at + len) lies inside the writable view (checked above), which
            // nothing else writes; no translated code runs meanwhile (the hart is
            // single-threaded and is here), and x86 keeps instruction fetch coherent with
            // stores to the same physical memory.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.write.as_ptr().add(at),
                    bytes.len(),
                );
            }
        }

        /// Copies `code` to the next free offset (which it must have been assembled
        /// for) and returns that offset; `None` if it does not fit.
        pub fn place(&mut self, code: &[u8]) -> Option<usize> {
            let at = self.used;
            if !self.fits(code.len(), 0) {
                return None;
            }
            self.write_at(at, code);
            self.used = (at + code.len()).next_multiple_of(16);
            Some(at)
        }

        /// Copies a block's cold `code` to the next free offset of the cold half (which it
        /// must have been assembled for) and returns that offset; `None` if it does not
        /// fit.
        pub fn place_cold(&mut self, code: &[u8]) -> Option<usize> {
            let at = self.cold_used;
            if !self.fits(0, code.len()) {
                return None;
            }
            self.write_at(at, code);
            self.cold_used = at + code.len();
            Some(at)
        }
    }

    impl Drop for ExecMem {
        fn drop(&mut self) {
            // SAFETY: both mappings were created by `new` with this size and nothing can
            // run in them after their owner is gone.
            unsafe {
                libc::munmap(self.base.as_ptr().cast(), self.size);
                libc::munmap(self.write.as_ptr().cast(), self.size);
            }
        }
    }
}

#[cfg(not(all(feature = "jit", target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use crate::hart::Hart;

    /// Whether this build can translate.
    pub const AVAILABLE: bool = false;

    /// How translated code is entered (never, in this build).
    pub type EntryFn = unsafe extern "C" fn(*mut Hart, *const u8);

    /// No executable memory in this build: `new` always declines.
    #[derive(Debug)]
    pub struct ExecMem(());

    impl ExecMem {
        pub fn new(
            _size: usize,
            _enter: fn(&mut super::super::x86::Asm),
            _leave: fn(&mut super::super::x86::Asm),
        ) -> Option<Self> {
            None
        }
        pub fn entry_fn(&self) -> EntryFn {
            unreachable!("never created")
        }
        pub fn addr(&self, _off: usize) -> *const u8 {
            unreachable!("never created")
        }
        pub fn base_addr(&self) -> u64 {
            unreachable!("never created")
        }
        pub fn size(&self) -> usize {
            unreachable!("never created")
        }
        pub fn next(&self) -> usize {
            unreachable!("never created")
        }
        pub fn fixed_symbols(&self, _base: u64) -> Vec<super::super::CodeSymbol> {
            unreachable!("never created")
        }
        pub fn epilogue(&self) -> usize {
            unreachable!("never created")
        }
        pub fn fits(&self, _hot: usize, _cold: usize) -> bool {
            unreachable!("never created")
        }
        pub fn next_cold(&self) -> usize {
            unreachable!("never created")
        }
        pub fn place_cold(&mut self, _code: &[u8]) -> Option<usize> {
            None
        }
        pub fn reset(&mut self) {}
        pub fn place_shared(
            &mut self,
            _code: &[u8],
            _symbols: Vec<(usize, usize, &'static str)>,
        ) -> Option<usize> {
            unreachable!("never created")
        }
        pub fn patch_jump(&mut self, _at: usize, _target: usize) {
            unreachable!("never created")
        }
        pub fn place(&mut self, _code: &[u8]) -> Option<usize> {
            None
        }
    }
}

pub use imp::*;
