//! The stall watchdog: a machine must never hang silently.
//!
//! A machine that has made no visible progress for [`DEFAULT_STALL_SECONDS`] guest seconds
//! (or the `--stall-seconds` given) is stopped, with the last lines of its console and a
//! snapshot to debug from. "No visible progress" means all three of:
//! - no console byte (HTIF or UART),
//! - no guest store to a flash drive (the output drive is where a build writes its results
//!   and logs),
//! - the hart was asleep in WFI for at least [`IDLE_PERCENT`] percent of the cycles,
//! - and no offload request was in flight when it looked (a build machine waiting for the
//!   host's answer to a job is not stalled: the host is working for it).
//!
//! A machine that computes without printing (a long `rustc` of one crate) is therefore never
//! stopped by this watchdog; only one that is idle and silent — waiting for an interrupt
//! that will not come, such as a console blocked on a lost transmitter interrupt — is.
//! Guest time is `mcycle`: one guest second is [`MCYCLES_PER_GUEST_SECOND`] cycles
//! (`mtime = mcycle / 8192` at the device tree's 15625 Hz timebase), so whether and where a
//! machine is stopped is as deterministic as the machine itself, given the same slicing of
//! the run (the callers use fixed mcycle slices).
//!
//! The counters read ([`Machine::idle_cycles`], [`Machine::drive_stores`]) are host
//! bookkeeping of the machine crate, outside the state hash: the watchdog never changes a
//! root hash.

use cmbuild_machine::board::{MCYCLES_PER_MTIME, TIMEBASE_HZ};
use std::path::Path;

use cmbuild_machine::machine::Machine;
use cmbuild_machine::snapshot::SnapshotConfig;

/// Guest seconds without visible progress after which a machine is stopped (the default of
/// `--stall-seconds`; 0 turns the watchdog off).
pub const DEFAULT_STALL_SECONDS: u64 = 600;

/// `mcycle` ticks in one guest second: 8192 per `mtime` tick, at the device tree's
/// `timebase-frequency`.
pub const MCYCLES_PER_GUEST_SECOND: u64 = TIMEBASE_HZ as u64 * MCYCLES_PER_MTIME;

/// A slice of a run counts as idle when at least this share (percent) of its cycles were
/// spent asleep in WFI.
pub const IDLE_PERCENT: u64 = 90;

/// Console lines kept for the stall message.
pub const TAIL_LINES: usize = 20;

/// Console bytes kept (the last ones) to find those lines in.
const TAIL_BYTES: usize = 8192;

/// Why the watchdog stopped a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// Guest seconds without visible progress.
    pub seconds: u64,
    /// The `mcycle` of the last visible progress.
    pub since_mcycle: u64,
    /// The `mcycle` when stopped.
    pub mcycle: u64,
    /// The last console lines, sanitised ([`crate::terminal::sanitize`]).
    pub console_tail: String,
}

/// Watches one machine through its run slices.
#[derive(Debug)]
pub struct Watchdog {
    /// Cycles without progress that stop the machine; 0: never.
    stall_mcycles: u64,
    last_progress: u64,
    last_mcycle: u64,
    last_idle: u64,
    last_stores: u64,
    tail: Vec<u8>,
}

impl Watchdog {
    /// A watchdog for `machine` from its current state, stopping it after `stall_seconds`
    /// guest seconds without visible progress (0: never).
    pub fn new(stall_seconds: u64, machine: &Machine) -> Self {
        Self {
            stall_mcycles: stall_seconds.saturating_mul(MCYCLES_PER_GUEST_SECOND),
            last_progress: machine.mcycle(),
            last_mcycle: machine.mcycle(),
            last_idle: machine.idle_cycles(),
            last_stores: machine.drive_stores(),
            tail: Vec::new(),
        }
    }

    /// Called after each run slice with the console bytes drained in it; `Some` when the
    /// machine is to be stopped.
    pub fn observe(&mut self, machine: &Machine, console: &[u8]) -> Option<Stall> {
        let mcycle = machine.mcycle();
        let span = mcycle.saturating_sub(self.last_mcycle);
        let idle = machine.idle_cycles().wrapping_sub(self.last_idle);
        let stores = machine.drive_stores();
        let waiting = machine.offload().is_some_and(|c| c.in_flight() > 0);
        let quiet = console.is_empty()
            && !waiting
            && stores == self.last_stores
            && u128::from(idle) * 100 >= u128::from(span) * u128::from(IDLE_PERCENT);
        if !quiet {
            self.last_progress = mcycle;
        }
        (self.last_mcycle, self.last_idle, self.last_stores) =
            (mcycle, machine.idle_cycles(), stores);
        self.tail.extend_from_slice(console);
        if self.tail.len() > TAIL_BYTES {
            self.tail.drain(..self.tail.len() - TAIL_BYTES);
        }
        let silent = mcycle - self.last_progress.min(mcycle);
        (self.stall_mcycles != 0 && silent >= self.stall_mcycles).then(|| Stall {
            seconds: silent / MCYCLES_PER_GUEST_SECOND,
            since_mcycle: self.last_progress,
            mcycle,
            console_tail: self.console_tail(),
        })
    }

    /// The last [`TAIL_LINES`] console lines seen, sanitised.
    pub fn console_tail(&self) -> String {
        last_lines(&crate::terminal::sanitize_bytes(&self.tail), TAIL_LINES)
    }
}

/// Writes the snapshot a stalled machine leaves to debug from, into `dir` (which must not
/// exist), and says where it is — or why it could not be written (the stall is the error
/// that matters, so this never fails).
pub fn store_snapshot(dir: &Path, machine: &mut Machine, config: &SnapshotConfig) -> String {
    match crate::snapshot_dir::store(dir, machine, config) {
        Ok(_) => format!(
            "a snapshot to debug from: {} (cmbuild machine run --load DIR)",
            dir.display()
        ),
        Err(e) => format!(
            "the snapshot could not be written: {}",
            crate::terminal::error_chain(&e)
        ),
    }
}

/// The last `n` lines of `text` (a last line without its newline counts).
fn last_lines(text: &str, n: usize) -> String {
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    let start = trimmed
        .rmatch_indices('\n')
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    trimmed[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_guest_second_is_128_million_cycles() {
        assert_eq!(MCYCLES_PER_GUEST_SECOND, 128_000_000);
    }

    /// Submits an empty offload request (tag 7) if `submit`, then sleeps in WFI forever
    /// with no interrupt enabled; the channel's answers come no earlier than 2^40 cycles.
    fn sleeper(submit: bool) -> Machine {
        use cmbuild_machine::machine::{MachineConfig, OffloadConfig, OffloadTransport};
        let nop = 0x0000_0013;
        let program: [u32; 5] = [
            0x1000_12b7,                            // lui t0, 0x10001   (the offload channel)
            0x0070_0313,                            // addi t1, zero, 7
            if submit { 0x0262_b023 } else { nop }, // sd t1, 0x20(t0)   (SUBMIT tag 7)
            0x1050_0073,                            // wfi
            0xffdf_f06f,                            // j .-4
        ];
        let config = MachineConfig {
            ram_length: 1 << 20,
            ram_image: Some(program.iter().flat_map(|w| w.to_le_bytes()).collect()),
            offload: Some(OffloadConfig {
                min_latency: 1 << 40,
                transport: OffloadTransport::Registers,
            }),
            ..Default::default()
        };
        Machine::new(&config).unwrap()
    }

    /// Runs `machine` in slices of 200e6 cycles up to 1e9, watched with a one-second limit.
    fn watch(mut machine: Machine) -> Option<Stall> {
        let mut watchdog = Watchdog::new(1, &machine);
        for slice in 1..=5 {
            while !matches!(
                machine.run(slice * 200_000_000),
                cmbuild_machine::machine::Break::MaxMcycle
            ) {}
            if let Some(stall) = watchdog.observe(&machine, &[]) {
                return Some(stall);
            }
        }
        None
    }

    #[test]
    fn a_machine_waiting_for_the_host_is_not_stalled() {
        let stall = watch(sleeper(false)).expect("idle and silent: stalled");
        assert_eq!((stall.since_mcycle, stall.mcycle), (0, 200_000_000));
        assert_eq!(watch(sleeper(true)), None);
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(last_lines("a\nb", 5), "a\nb");
        assert_eq!(last_lines("", 3), "");
    }
}
