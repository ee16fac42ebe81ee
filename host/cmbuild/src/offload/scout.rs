//! A build machine's scout: a second copy of it, started from the same template and input
//! drive, whose jobs are answered as soon as the host has computed them instead of at
//! `T + L + C`, so that its cargo submits each job as soon as the job's inputs exist
//! (`docs/parallel-builds.md`, "The scout").
//!
//! The build machine itself cannot: its time is its instruction count, so it runs no
//! further than the earliest `T + L + c` of its running jobs allows, and a long job
//! submitted early holds back every job submitted after it, though their inputs were
//! ready long before (b3sum's `clap_builder` waited about 200 s of a 2-core build for the
//! parent's time to reach it). Jobs are content-addressed, so a job the scout submits is
//! the job its build machine will submit, bit for bit: the service computes it once, and
//! the build machine's request takes it from the cache or follows it in flight. Nothing
//! the scout does reaches the build machine's history (its answers are the service's,
//! which are the same whoever asked first); the scout only changes when the host works.
//!
//! Its time is its own: an answer is delivered at the first cycle its channel accepts, and
//! at a wall the scout promises its unanswered requests a step further when it has work to
//! do (it is busy, or was just answered), else blocks until an answer comes. So its clock
//! counts its own work, near its build machine's, and its submission cycles rank its jobs
//! among the build machine's ones in the host's slots.
//!
//! It stops when its build machine halts, when it has had no job in flight for
//! [`IDLE_BUDGET`] instructions after its first answer (it is doing work no job gives: a
//! long build script, or a target the wrapper compiles in the machine, such as a `cdylib`),
//! when it halts (it finished the build: the project's binary is a job too), at its mcycle
//! limit, or at any error of its own (which never fails the run).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cmbuild_machine::machine::{Break, Machine};

use super::link::{Link, LinkError};

/// How far past its wall a scout with work to do is promised at once (about a tenth of a
/// second of its guest's time).
pub const STEP: u64 = 1 << 25;

/// Instructions a scout may run with no job in flight, once it has been answered, before
/// it stops.
pub const IDLE_BUDGET: u64 = 3_000_000_000;

/// Cycles a scout runs between looks at its stop flag.
const SLICE: u64 = 1 << 26;

/// How long a scout waiting for an answer blocks before it looks at its stop flag again.
const POLL: Duration = Duration::from_millis(100);

/// Why a scout stopped (its `Display` is a phrase for the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Its build machine halted (or failed).
    Told,
    /// It ran [`IDLE_BUDGET`] instructions with no job in flight.
    Idle,
    /// It halted.
    Halted,
    /// It reached its mcycle limit.
    Limit,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Told => f.write_str("its build machine halted"),
            End::Idle => write!(
                f,
                "no job in flight for {:.0e} instructions",
                IDLE_BUDGET as f64
            ),
            End::Halted => f.write_str("it halted"),
            End::Limit => f.write_str("it reached its mcycle limit"),
        }
    }
}

/// What the scout did since it last stood at a wall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Since {
    /// Instructions it ran (cycles not spent asleep).
    busy: u64,
    /// Whether an answer was delivered to it.
    answered: bool,
}

/// What a scout does at a wall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtWall {
    /// Promise every unanswered request this cycle: it has work to do.
    Promise(u64),
    /// Block until an answer comes: it sleeps, waiting for one.
    Wait,
}

/// A scout at a wall at cycle `now` runs on a [`STEP`] if it worked or was answered since
/// its last wall (cargo reacts to the answer, or the work goes on); else it waits.
fn at_wall(now: u64, since: Since) -> AtWall {
    if since.answered || since.busy >= STEP / 4 {
        AtWall::Promise(now.saturating_add(STEP))
    } else {
        AtWall::Wait
    }
}

/// A scout's marks: where it stood at its last wall.
#[derive(Debug, Clone, Copy)]
struct Mark {
    mcycle: u64,
    idle: u64,
    answered: u64,
}

impl Mark {
    fn of(machine: &Machine, link: &Link<'_, '_>) -> Mark {
        Mark {
            mcycle: machine.mcycle(),
            idle: machine.idle_cycles(),
            answered: link.answered(),
        }
    }

    /// Instructions run since `self`.
    fn busy(&self, now: &Mark) -> u64 {
        (now.mcycle - self.mcycle).saturating_sub(now.idle.wrapping_sub(self.idle))
    }
}

/// Promises every unanswered request of `machine` no earlier than `not_before`.
fn promise_all(machine: &mut Machine, not_before: u64) -> Result<(), LinkError> {
    let tags: Vec<u64> = machine
        .offload()
        .map(|c| c.unanswered().collect())
        .unwrap_or_default();
    for tag in tags {
        machine.offload_promise(tag, not_before)?;
    }
    Ok(())
}

/// Runs a scout (`machine`, resumed like its build machine, on `link` over a
/// [`super::parent::Parent::scout`]) until `stop` is set or it ends by itself.
pub fn run(
    machine: &mut Machine,
    link: &mut Link<'_, '_>,
    stop: &AtomicBool,
    max_mcycle: u64,
) -> Result<End, LinkError> {
    let mut wall = Mark::of(machine, link);
    let mut last = wall;
    // Instructions run since the scout last had a job in flight.
    let mut idle_run = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(End::Told);
        }
        let stop_at = machine.mcycle().saturating_add(SLICE).min(max_mcycle);
        let why = machine.run(stop_at);
        // Nobody reads a scout's console.
        drop(machine.drain_console());
        match why {
            Break::Halted(_) => return Ok(End::Halted),
            Break::MaxMcycle if machine.mcycle() >= max_mcycle => return Ok(End::Limit),
            Break::MaxMcycle | Break::Yielded(_) => {}
            Break::OffloadRequest(tag) => link.submit(machine, tag)?,
            Break::OffloadWaiting(_) => {
                link.drain(machine)?;
                let now = Mark::of(machine, link);
                let since = Since {
                    busy: wall.busy(&now),
                    answered: now.answered != wall.answered,
                };
                match at_wall(now.mcycle, since) {
                    AtWall::Promise(at) => promise_all(machine, at)?,
                    // Waiting at the same cycle: nothing ran, the next look sees whether
                    // an answer came.
                    AtWall::Wait => {
                        link.wait_for(machine, POLL)?;
                        continue;
                    }
                }
                wall = Mark::of(machine, link);
            }
        }
        link.drain(machine)?;
        let now = Mark::of(machine, link);
        // Counted from its first job: cargo's own start is no sign of the end.
        idle_run = match (link.pending(), link.answered()) {
            (_, 0) | (1.., _) => 0,
            (0, _) => idle_run.saturating_add(last.busy(&now)),
        };
        last = now;
        if idle_run >= IDLE_BUDGET {
            return Ok(End::Idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_end_names_the_budget() {
        assert_eq!(
            End::Idle.to_string(),
            "no job in flight for 3e9 instructions"
        );
    }

    #[test]
    fn a_scout_runs_on_when_it_has_work_and_waits_when_it_sleeps() {
        let now = 1_000_000_000;
        let asleep = Since {
            busy: 0,
            answered: false,
        };
        assert_eq!(at_wall(now, asleep), AtWall::Wait);
        // A few instructions of timer interrupts while it waits are still sleep.
        let ticking = Since {
            busy: STEP / 100,
            ..asleep
        };
        assert_eq!(at_wall(now, ticking), AtWall::Wait);
        let answered = Since {
            answered: true,
            ..asleep
        };
        assert_eq!(at_wall(now, answered), AtWall::Promise(now + STEP));
        let working = Since {
            busy: STEP / 2,
            ..asleep
        };
        assert_eq!(at_wall(now, working), AtWall::Promise(now + STEP));
        assert_eq!(
            at_wall(u64::MAX - 1, working),
            AtWall::Promise(u64::MAX),
            "no overflow"
        );
    }
}
