//! Event counters of a hart, for profiling (cargo feature `counters`; without it none of
//! this is compiled in and [`count!`] expands to nothing).
//!
//! A profile says where host time goes; these say how often the events behind it happen:
//! interpreter steps against entries into translated code, helper calls by kind, TLB
//! refills and flushes, traps, decode-cache evictions and blocks translated, and the host
//! page faults of the hart's thread. With the feature on, every hart prints to stderr one
//! line of the counts since its last line every ten billion cycles, and one with its
//! totals when it is dropped, so a long build's phases, or a sibling machine and a warm one,
//! can be compared per billion instructions. Counting changes no result: nothing here is
//! read by the machine.

/// Bumps counter `$field` of `$hart.counters` when the feature is on.
macro_rules! count {
    ($hart:expr, $field:ident) => {
        #[cfg(feature = "counters")]
        {
            $hart.counters.now.$field += 1;
        }
    };
}
pub(crate) use count;

#[cfg(feature = "counters")]
pub use imp::*;

/// What the feature adds.
#[cfg(feature = "counters")]
mod imp {
    /// Cycles between two report lines of a hart.
    pub const REPORT_EVERY: u64 = 10_000_000_000;

    macro_rules! counters {
        ($($(#[doc = $doc:literal])* $field:ident,)*) => {
            /// Events counted since the hart was made (see the module's documentation).
            #[derive(Debug, Default, Clone, Copy)]
            pub struct Counters {
                $($(#[doc = $doc])* pub $field: u64,)*
            }

            impl Counters {
                /// `name=count` for every counter, in declaration order.
                fn fields(&self) -> Vec<(&'static str, u64)> {
                    vec![$((stringify!($field), self.$field),)*]
                }

                /// The counts since `earlier`.
                fn since(&self, earlier: &Counters) -> Counters {
                    Counters { $($field: self.$field.wrapping_sub(earlier.$field),)* }
                }
            }
        };
    }

    counters! {
        /// Instructions the interpreter's loop stepped through (translated ones not counted).
        interpreted,
        /// Entries into translated code from Rust.
        jit_entries,
        /// Returns from translated code with the stop reached (the budget spent, or an
        /// event that asked the run loop to look at interrupts).
        exit_stop,
        /// Returns with `pc` on another page than the last fetch's (a chaining lookup that
        /// failed, a trap).
        exit_other_page,
        /// Returns with `pc` at an instruction of the same page not translated yet.
        exit_cold,
        /// Returns with `pc` at an instruction translated code leaves to the interpreter.
        exit_untranslated,
        /// Returns with `pc` at a translated block (a store into code, a helper that left).
        exit_translated,
        /// Blocks translated.
        blocks,
        /// Guest instructions in the blocks translated.
        block_insns,
        /// `exec_helper` calls for an AMO.
        helper_amo,
        /// `exec_helper` calls for LR or SC.
        helper_lrsc,
        /// `exec_helper` calls for a CSR instruction.
        helper_csr,
        /// `exec_helper` calls for a floating-point instruction.
        helper_fp,
        /// `exec_helper` calls for a store off the inline path.
        helper_store,
        /// `exec_helper` calls for anything else.
        helper_other,
        /// `load_helper` calls (loads off the inline path).
        helper_load,
        /// `fetch_helper` calls (chaining on a fetch-TLB miss).
        helper_fetch,
        /// Fetch-TLB refills (page walks for fetches that succeeded or faulted).
        fill_fetch,
        /// Load-TLB refills.
        fill_load,
        /// Store-TLB refills.
        fill_store,
        /// Fetch-TLB refills a second way per set would have served: the entry wanted is
        /// the one the previous refill of its set evicted (since the last flush).
        second_way_fetch,
        /// The same for the load TLB.
        second_way_load,
        /// The same for the store TLB.
        second_way_store,
        /// TLB flushes (`sfence.vma`, `satp` writes, layout changes).
        tlb_flushes,
        /// `sfence.vma` instructions with an address operand.
        sfence_addr,
        /// Page faults taken (fetch, load, store).
        page_faults,
        /// Other exceptions taken (ecalls included).
        exceptions,
        /// Interrupts taken.
        interrupts,
        /// Decode-cache pages evicted to make room.
        dcache_evictions,
        /// Times the code region filled up and was emptied.
        code_resets,
    }

    /// A hart's counters and what it last reported.
    #[derive(Debug, Default)]
    pub struct Report {
        /// The hart's counts so far.
        pub now: Counters,
        /// The counts at the last line printed.
        last: Counters,
        /// `mcycle` at the last line printed, or when the hart first ran (a resumed machine
        /// starts at its snapshot's).
        last_mcycle: Option<u64>,
        /// `mcycle` when the hart first ran.
        first_mcycle: Option<u64>,
        /// Host page faults of the thread at the last line printed.
        last_faults: (u64, u64),
        /// Per TLB array and set, the tag its last refill evicted and the flush count then
        /// (for the `second_way_*` counts).
        evicted: Vec<(u64, u64)>,
    }

    impl Report {
        /// Notes a refill of set `set` of TLB array `array` (0 fetch, 1 load, 2 store, of
        /// `sets` sets each) with `tag`, evicting `old`; returns whether the tag is the one
        /// the set's previous refill evicted since the last flush (`flushes` so far).
        pub fn refill(
            &mut self,
            array: usize,
            set: usize,
            sets: usize,
            tag: u64,
            old: u64,
            flushes: u64,
        ) -> bool {
            if self.evicted.is_empty() {
                self.evicted = vec![(0, 0); 3 * sets];
            }
            let slot = &mut self.evicted[array * sets + set];
            let hit = tag != 0 && *slot == (tag, flushes);
            *slot = (old, flushes);
            hit
        }

        /// Prints the counts since the last line if `mcycle` is [`REPORT_EVERY`] past it.
        pub fn maybe_print(&mut self, mcycle: u64) {
            if self.due(mcycle) {
                eprintln!("{}", self.take_line("interval", mcycle));
            }
        }

        /// Prints the last interval and the totals (when the hart is dropped).
        pub fn print_total(&mut self, mcycle: u64) {
            for line in self.total_lines(mcycle) {
                eprintln!("{line}");
            }
        }

        /// Whether a line is due at `mcycle` (the first call only notes where the hart
        /// starts).
        fn due(&mut self, mcycle: u64) -> bool {
            self.first_mcycle.get_or_insert(mcycle);
            let last = *self.last_mcycle.get_or_insert(mcycle);
            mcycle.wrapping_sub(last) >= REPORT_EVERY
        }

        /// The last interval's line, then the totals' since the hart first ran.
        fn total_lines(&mut self, mcycle: u64) -> [String; 2] {
            let first = self.first_mcycle;
            let interval = self.take_line("interval", mcycle);
            self.last = Counters::default();
            self.last_mcycle = first;
            self.last_faults = (0, 0);
            [interval, self.take_line("total", mcycle)]
        }

        /// The counts since the last line (`what` names the line); starts a new one.
        fn take_line(&mut self, what: &str, mcycle: u64) -> String {
            let faults = thread_page_faults();
            let delta = self.now.since(&self.last);
            let mut line = format!(
                "hart counters {what} thread={:?} mcycle={mcycle} cycles={} host_minflt={} host_majflt={}",
                std::thread::current().name().unwrap_or("?"),
                mcycle.wrapping_sub(self.last_mcycle.unwrap_or(0)),
                faults.0.wrapping_sub(self.last_faults.0),
                faults.1.wrapping_sub(self.last_faults.1),
            );
            for (name, n) in delta.fields() {
                line.push_str(&format!(" {name}={n}"));
            }
            self.last = self.now;
            self.last_mcycle = Some(mcycle);
            self.last_faults = faults;
            line
        }
    }

    /// Minor and major page faults of the calling thread so far.
    #[cfg(target_os = "linux")]
    fn thread_page_faults() -> (u64, u64) {
        // SAFETY: `getrusage` writes one `rusage` into the zeroed value we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; RUSAGE_THREAD is valid on Linux.
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
            return (0, 0);
        }
        (usage.ru_minflt as u64, usage.ru_majflt as u64)
    }

    #[cfg(not(target_os = "linux"))]
    fn thread_page_faults() -> (u64, u64) {
        (0, 0)
    }
    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lines_count_each_interval_and_the_totals_from_where_the_hart_began() {
            let mut r = Report::default();
            let start = 3_000; // a resumed hart begins at its snapshot's mcycle
            assert!(!r.due(start));
            r.now.interpreted = 5;
            assert!(!r.due(start + REPORT_EVERY - 1));
            assert!(r.due(start + REPORT_EVERY));
            let line = r.take_line("interval", start + REPORT_EVERY);
            assert!(line.contains(&format!(" cycles={REPORT_EVERY} ")), "{line}");
            assert!(line.contains(" interpreted=5 "), "{line}");
            assert!(!r.due(start + REPORT_EVERY + 10));
            r.now.interpreted = 7;
            r.now.code_resets = 1;
            let [last, total] = r.total_lines(start + REPORT_EVERY + 10);
            assert!(last.starts_with("hart counters interval "), "{last}");
            assert!(
                last.contains(" cycles=10 ") && last.contains(" interpreted=2 "),
                "{last}"
            );
            assert!(total.starts_with("hart counters total "), "{total}");
            assert!(
                total.contains(&format!(" cycles={} ", REPORT_EVERY + 10)),
                "{total}"
            );
            assert!(total.contains(" interpreted=7 ") && total.ends_with(" code_resets=1"));
        }

        #[test]
        fn a_refill_counts_for_a_second_way_when_it_wants_what_the_set_last_evicted() {
            let mut r = Report::default();
            // a into an empty set, b evicts a, a again: a second way would have held it.
            assert!(!r.refill(1, 5, 8, 0xa, 0, 0));
            assert!(!r.refill(1, 5, 8, 0xb, 0xa, 0));
            assert!(r.refill(1, 5, 8, 0xa, 0xb, 0));
            // After a flush nothing evicted before it counts, and each array is its own.
            assert!(!r.refill(1, 5, 8, 0xb, 0xa, 1));
            assert!(!r.refill(0, 5, 8, 0xa, 0, 1));
        }
    }
}
