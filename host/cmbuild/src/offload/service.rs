//! Computing dispatched jobs for every parent of a run: from the action cache when it
//! holds a checked entry, else in a sibling machine, at most `--jobs` siblings at a time
//! across all parents. How long any of this takes never reaches a parent: its answer's
//! cycle is `T + L + C` ([`super::parent`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::blobs::BlobStore;
use super::cache::{ActionCache, CacheError, Computed, Lookup, MetaPoint};
use super::job::{Job, VOLATILE_ENV};
use super::parent::Dispatch;
use super::sibling::{self, SiblingError};
use super::wire::Response;
use cmbuild_store::sha256::Sha256;

/// Live siblings per `--jobs` core: enough that the one the parent waits for can start
/// while others hold their cores, few enough for their memory (a rustc's machine holds up
/// to a few GiB).
const LIVE_PER_CORE: usize = 2;

/// How many siblings may be live for `jobs` cores. With one core there is one: that core is
/// always busy, so the order of the work cannot shorten the build, and a second live
/// machine would only hold memory and share the caches (b3sum's `--jobs 1` took 944 and
/// 986 s with two live siblings, 988 s with one: no difference this host's noise hides).
fn live_siblings(jobs: usize) -> usize {
    match jobs.max(1) {
        1 => 1,
        n => LIVE_PER_CORE * n,
    }
}

/// What a sibling machine did with an input drive.
#[derive(Debug)]
pub struct SiblingRun {
    /// Its output drive.
    pub output_drive: Vec<u8>,
    /// Instructions it ran from the template to its halt.
    pub cycles: u64,
    /// Its root hash at halt.
    pub root_hash: String,
    /// The end of its console (sanitised), to explain a job that gave no result.
    pub console_tail: String,
}

/// Runs sibling machines (a build machine resumed from the template, in `crate::run`;
/// a fake in tests).
pub trait SiblingRunner: Sync {
    /// Runs one sibling to its halt with `input_drive`, calling `progress` now and then
    /// with the instructions it has run so far (it has not halted yet), and `meta` with the
    /// instructions and the record at each metadata yield (`sibling::meta_record`); an
    /// error is the host's (the machine could not be made or run), never the job's.
    fn run(
        &self,
        input_drive: Vec<u8>,
        progress: &dyn Fn(u64),
        meta: &dyn Fn(u64, Vec<u8>),
    ) -> Result<SiblingRun, String>;
}

/// How one job was computed (for the user: [`Service::on_done`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobDone {
    /// Whether every run of it came from the cache.
    pub cached: bool,
    /// Its `C`.
    pub cycles: u64,
    /// Host seconds its sibling machines ran (not counting the wait for a free slot).
    pub seconds: f64,
}

/// Errors of the host while computing a job: they fail the run (a job's own failure is an
/// answer, not one of these).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// cannot make the sibling's input drive
    #[error("cannot make the sibling's input drive")]
    Drive(#[source] SiblingError),
    /// a sibling machine failed: {0}
    #[error("a sibling machine failed: {0}")]
    Sibling(String),
    /// cannot keep a job's result
    #[error("cannot keep a job's result")]
    Cache(#[from] CacheError),
    /// cannot make a scratch directory
    #[error("cannot make a scratch directory")]
    Scratch(#[source] std::io::Error),
    /// the host's computation of a job panicked (a bug in cmbuild)
    #[error("the host's computation of a job panicked (a bug in cmbuild)")]
    Panicked,
    /// the same job, computed for another machine, failed: {0}
    #[error("the same job, computed for another machine, failed: {0}")]
    Shared(String),
}

/// Counts of what the service did (for the run's summary).
#[derive(Debug, Default)]
pub struct Counts {
    /// Jobs taken from the cache.
    pub hits: AtomicU64,
    /// Jobs run in a sibling.
    pub runs: AtomicU64,
    /// Cache entries refused (and recomputed).
    pub refused: AtomicU64,
    /// Jobs that waited for an identical job another build machine had asked for.
    pub shared: AtomicU64,
    /// A build machine's jobs that its scout had started (run or running when asked for).
    pub prefetched: AtomicU64,
    /// Guest instructions siblings ran (cached jobs included, at their recorded count).
    pub cycles: AtomicU64,
    /// Siblings that waited for the host's memory before they started.
    pub memory_waits: AtomicU64,
}

/// `n` slots, each taken by the waiting holder with the smallest key (then the earliest to
/// ask). Two sets of them schedule the siblings:
/// - live siblings (each holds its machine's memory), keyed by their submission cycle: the
///   parent can run no further than its earliest unfinished job lets it (`link.rs`,
///   promises), so that job is the one to start;
/// - host cores among the live siblings, keyed by their wall `T + c` (submission cycle plus
///   progress), and given up at a slice's end to a smaller waiting one
///   ([`Slot::reschedule`]): advancing the sibling whose answer the parent reaches first lets
///   it find its next jobs soonest, where running jobs to their end in turn would spend the
///   host on work past the point the parent needs.
///
/// With scouts both sets are keyed by rank instead ([`Service::ranks`]), and a sibling keeps
/// its core to its end: the scouts find jobs before the walls would.
///
/// The live slots may also have a memory gate ([`Service::set_memory_gate`]): a sibling
/// beyond the first live one starts only while the host has memory for it
/// ([`crate::memory`]); the first never waits for it, so the build always goes on.
#[derive(Debug)]
struct Slots {
    state: Mutex<SlotState>,
    changed: Condvar,
    /// The slots in all.
    n: usize,
    /// Whether a holder beyond the first may start (`None`: always).
    gate: Option<crate::memory::MemoryGate>,
}

/// How often a holder held back by the memory gate asks again: memory comes back when any
/// machine of the process ends, not only a holder of these slots.
const GATE_POLL: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug)]
struct SlotState {
    free: usize,
    /// Waiting holders, by (key, id).
    waiting: std::collections::BTreeSet<(u64, u64)>,
    ids: u64,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            state: Mutex::new(SlotState {
                free: n,
                waiting: Default::default(),
                ids: 0,
            }),
            changed: Condvar::new(),
            n,
            gate: None,
        }
    }

    /// Waits until `me` is the smallest waiting and a slot is free, and, when `gated`, the
    /// gate allows it or no slot is held; takes it. Returns whether the gate held it back.
    fn wait_turn<'a>(
        &'a self,
        mut state: std::sync::MutexGuard<'a, SlotState>,
        me: (u64, u64),
        gated: bool,
    ) -> (std::sync::MutexGuard<'a, SlotState>, bool) {
        state.waiting.insert(me);
        let mut held_back = false;
        loop {
            if state.free == 0 || state.waiting.first() != Some(&me) {
                state = self.changed.wait(state).expect("no panics hold this lock");
                continue;
            }
            let gate = self.gate.as_ref().filter(|_| gated && state.free < self.n);
            if gate.is_none_or(|gate| gate.allows()) {
                break;
            }
            held_back = true;
            state = self
                .changed
                .wait_timeout(state, GATE_POLL)
                .expect("no panics hold this lock")
                .0;
        }
        state.waiting.remove(&me);
        state.free -= 1;
        // The next in line may take a slot that is still free.
        self.changed.notify_all();
        (state, held_back)
    }

    /// A slot for a holder with `key`, once it is the smallest waiting (and the gate, if
    /// any, allows one more).
    fn take(&self, key: u64) -> Slot<'_> {
        let mut state = self.state.lock().expect("no panics hold this lock");
        let id = state.ids;
        state.ids += 1;
        let (state, held_back) = self.wait_turn(state, (key, id), true);
        drop(state);
        Slot {
            slots: self,
            id,
            held_back,
        }
    }
}

/// A slot held.
struct Slot<'a> {
    slots: &'a Slots,
    id: u64,
    /// Whether the memory gate held it back before it got the slot.
    held_back: bool,
}

impl Slot<'_> {
    /// The holder's key is now `key`: it gives the slot up to a smaller waiting one, and
    /// waits for its turn again.
    fn reschedule(&self, key: u64) {
        let mut state = self.slots.state.lock().expect("no panics hold this lock");
        if state.waiting.first().is_some_and(|&(first, _)| first < key) {
            state.free += 1;
            self.slots.changed.notify_all();
            // Its machine is in memory already: the gate is for new ones.
            drop(self.slots.wait_turn(state, (key, self.id), false));
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.slots.state.lock().expect("no panics hold this lock");
        state.free += 1;
        self.slots.changed.notify_all();
    }
}

/// A job being computed, as the machines that asked for it see it.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<SharedState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct SharedState {
    /// The highest bound of its `C` given so far.
    bound: u64,
    /// Its metadata point, once its sibling reached it.
    meta: Option<MetaPoint>,
    /// Its end: the answer, or why the host could not compute it.
    done: Option<Result<Computed, String>>,
}

/// Ends a shared job for the machines waiting on it however its computation ends (a panic
/// included: they must not wait forever). Its cache entry, if any, was written before, so a
/// later identical job finds it in the table or in the cache.
struct Finish<'s> {
    in_flight: &'s Mutex<std::collections::BTreeMap<Sha256, Arc<Shared>>>,
    action: Sha256,
    shared: &'s Shared,
    done: Option<Result<Computed, String>>,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let unpoisoned = |e: std::sync::PoisonError<_>| e.into_inner();
        self.in_flight
            .lock()
            .unwrap_or_else(unpoisoned)
            .remove(&self.action);
        let done = self.done.take().unwrap_or_else(|| {
            Err("its computation ended without an answer (a bug in cmbuild)".into())
        });
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .done = Some(done);
        self.shared.changed.notify_all();
    }
}

/// What [`Service::on_failed`] is called with: the job, why, and its sibling's console's end.
pub type OnFailed<'a> = dyn Fn(&super::job::Job, &str, &str) + Sync + 'a;

/// What [`Service::on_done`] is called with.
pub type OnDone<'a> = dyn Fn(&super::job::Job, JobDone) + Sync + 'a;

/// A sibling machine's start or end, for the user ([`Service::on_sibling`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiblingEvent {
    /// A sibling started running the job; the number is the run's own for it, unique
    /// within the service.
    Started(u64),
    /// The sibling of that number ended, with a result or not.
    Ended(u64),
}

/// What [`Service::on_sibling`] is called with.
pub type OnSibling<'a> = dyn Fn(&super::job::Job, SiblingEvent) + Sync + 'a;

/// Says [`SiblingEvent::Ended`] when dropped: a sibling that fails ends too.
struct SiblingGuard<'s, 'a> {
    service: &'s Service<'a>,
    job: &'s super::job::Job,
    id: u64,
}

impl Drop for SiblingGuard<'_, '_> {
    fn drop(&mut self) {
        (self.service.on_sibling)(self.job, SiblingEvent::Ended(self.id));
    }
}

/// The run's job service.
pub struct Service<'a> {
    blobs: &'a BlobStore,
    tool: &'a [u8],
    cache: Option<ActionCache>,
    runner: &'a dyn SiblingRunner,
    live: Slots,
    cores: Slots,
    scratch: PathBuf,
    /// Jobs being computed now, by action digest: an identical job (the same proc macro or
    /// build script for another triple's machine) waits for that one instead of running.
    in_flight: Mutex<std::collections::BTreeMap<Sha256, Arc<Shared>>>,
    /// Actions a scout's request started in a sibling (`super::scout`).
    scouted: Mutex<std::collections::BTreeSet<Sha256>>,
    /// Actions whose results this service computed and wrote to the cache, with the entry
    /// each got: taken from the cache again even when it is write-only, if the entry is
    /// still that one (`run --recompute-jobs` computes each job once, not once per request:
    /// a job its scout ran ahead, or another triple's identical build script, comes from
    /// this run's own result).
    stored: Mutex<std::collections::BTreeMap<Sha256, super::cache::Written>>,
    /// With scouts: the order of the host's work ([`super::rank`]), in place of the
    /// build machine's walls.
    pub ranks: Option<super::rank::Ranks>,
    /// Whether the run has a glibc floor: its siblings mount the floor's sysroots, which
    /// their runner puts on their scratch drives (`sibling::plan_env`).
    pub floor: bool,
    /// What it did.
    pub counts: Counts,
    /// Called with each refused cache entry's reason (a warning for the user).
    pub on_refused: Box<dyn Fn(&str) + Sync + 'a>,
    /// Called with each job whose sibling gave no result: why, and its console's end.
    pub on_failed: Box<OnFailed<'a>>,
    /// Called with each job computed.
    pub on_done: Box<OnDone<'a>>,
    /// Called when a sibling machine starts running a job, and when it ends.
    pub on_sibling: Box<OnSibling<'a>>,
    /// The number of the next sibling started ([`SiblingEvent`]).
    next_sibling: AtomicU64,
}

impl<'a> Service<'a> {
    /// A service running at most `jobs` siblings at once, with `cache` (none: every job
    /// runs), unpacking output drives under `scratch`.
    pub fn new(
        blobs: &'a BlobStore,
        tool: &'a [u8],
        cache: Option<ActionCache>,
        runner: &'a dyn SiblingRunner,
        jobs: usize,
        scratch: PathBuf,
    ) -> Service<'a> {
        Service {
            blobs,
            tool,
            cache,
            runner,
            live: Slots::new(live_siblings(jobs)),
            cores: Slots::new(jobs.max(1)),
            in_flight: Mutex::default(),
            scouted: Mutex::default(),
            stored: Mutex::default(),
            ranks: None,
            floor: false,
            scratch,
            counts: Counts::default(),
            on_refused: Box::new(|_| {}),
            on_failed: Box::new(|_, _, _| {}),
            on_done: Box::new(|_, _| {}),
            on_sibling: Box::new(|_, _| {}),
            next_sibling: AtomicU64::new(0),
        }
    }

    /// Holds a sibling back, while another is live, until `gate` allows one more machine
    /// ([`crate::memory`]).
    pub fn set_memory_gate(&mut self, gate: crate::memory::MemoryGate) {
        self.live.gate = Some(gate);
    }

    /// The memory gate siblings wait for, if it has one: the run's other machines (a
    /// scout) ask the same one.
    pub fn memory_gate(&self) -> Option<&crate::memory::MemoryGate> {
        self.live.gate.as_ref()
    }

    /// Computes a dispatched job: the cache's checked entry, else a sibling's run (kept in
    /// the cache when it gave a result), calling `progress` with rising lower bounds of its
    /// `C` while a sibling runs it, and `on_meta` once with its metadata point if it has
    /// one (as soon as a sibling reaches it, or with the cached answer).
    ///
    /// A job with volatile variables ([`VOLATILE_ENV`]) runs first without them, and again
    /// with them only if the crate read one; then its `C` is both runs' instructions, so
    /// that the bound the first run gives holds for the answer. Whether it read one is
    /// what its dep-info says, at its metadata point when it has one (rustc writes the
    /// dep-info before the `.rmeta`), so a first run's metadata is handed on while it runs.
    pub fn compute(
        &self,
        dispatch: &Dispatch,
        progress: &dyn Fn(u64),
        on_meta: &dyn Fn(MetaPoint),
    ) -> Result<(Sha256, Computed), ServiceError> {
        // Host seconds in siblings, `None` while every run came from the cache.
        let mut seconds: Option<f64> = None;
        let mut add = |ran: Option<f64>| {
            if let Some(ran) = ran {
                *seconds.get_or_insert(0.0) += ran;
            }
        };
        // Handed on once: live from whichever run counts, else with the computed answer.
        let forwarded = std::cell::Cell::new(false);
        let forward = |point: MetaPoint| {
            if !forwarded.replace(true) {
                on_meta(point);
            }
        };
        let mut base = 0;
        if let Some((first, action)) = &dispatch.first {
            let live = |point: MetaPoint| {
                if !reads_volatile(&point.meta.env_deps()) {
                    forward(point);
                }
            };
            let (computed, ran) = self.compute_one(
                first,
                action,
                dispatch.submitted_at,
                dispatch.scout,
                progress,
                &live,
            )?;
            add(ran);
            if !computed_reads_volatile(&computed) {
                if let Some(point) = &computed.meta {
                    forward(point.clone());
                }
                self.done(&dispatch.job, computed.cycles, seconds);
                return Ok((*action, computed));
            }
            base = computed.cycles;
        }
        let (mut computed, ran) = self.compute_one(
            &dispatch.job,
            &dispatch.action,
            dispatch.submitted_at,
            dispatch.scout,
            &|c| progress(base + c),
            &|point: MetaPoint| {
                forward(MetaPoint {
                    cycles: base + point.cycles,
                    ..point
                })
            },
        )?;
        add(ran);
        computed.cycles += base;
        if let Some(point) = &mut computed.meta {
            point.cycles += base;
            forward(point.clone());
        }
        self.done(&dispatch.job, computed.cycles, seconds);
        Ok((dispatch.action, computed))
    }

    fn done(&self, job: &Job, cycles: u64, seconds: Option<f64>) {
        let done = JobDone {
            cached: seconds.is_none(),
            cycles,
            seconds: seconds.unwrap_or(0.0),
        };
        (self.on_done)(job, done);
    }

    /// `job` (whose action digest is `action`, submitted at `submitted_at`, by a scout if
    /// `scout`) from an identical job in flight, the cache, or a sibling (and the host
    /// seconds it ran, not counting the wait for a slot). A job in flight is followed
    /// before the cache is looked at: an entry being recomputed is refused once.
    fn compute_one(
        &self,
        job: &Job,
        action: &Sha256,
        submitted_at: u64,
        scout: bool,
        progress: &dyn Fn(u64),
        on_meta: &dyn Fn(MetaPoint),
    ) -> Result<(Computed, Option<f64>), ServiceError> {
        // A build machine's job that a scout started: counted as found ahead, not as
        // shared or cached (a scout's own lookups count nothing: they are not the build's).
        // Whether it was counted in `counter`.
        let count_given = |counter: &AtomicU64| -> bool {
            if scout {
                return false;
            }
            let ahead = self
                .scouted
                .lock()
                .expect("no panics hold this lock")
                .contains(action);
            match ahead {
                true => self.counts.prefetched.fetch_add(1, Ordering::Relaxed),
                false => counter.fetch_add(1, Ordering::Relaxed),
            };
            !ahead
        };
        let shared = {
            let mut in_flight = self.in_flight.lock().expect("no panics hold this lock");
            if let Some(shared) = in_flight.get(action) {
                let shared = shared.clone();
                drop(in_flight);
                count_given(&self.counts.shared);
                return Self::follow(&shared, progress, on_meta).map(|computed| (computed, None));
            }
            if let Some(hit) = self.lookup(job, action) {
                drop(in_flight);
                // A scout's run counted its instructions already.
                if count_given(&self.counts.hits) {
                    self.counts.cycles.fetch_add(hit.cycles, Ordering::Relaxed);
                }
                return Ok((hit, None));
            }
            let shared = Arc::new(Shared::default());
            in_flight.insert(*action, shared.clone());
            if scout {
                self.scouted
                    .lock()
                    .expect("no panics hold this lock")
                    .insert(*action);
            }
            shared
        };
        let mut finish = Finish {
            in_flight: &self.in_flight,
            action: *action,
            shared: &shared,
            done: None,
        };
        let forward = |c: u64| {
            shared.state.lock().expect("no panics hold this lock").bound = c;
            shared.changed.notify_all();
            progress(c);
        };
        let forward_meta = |point: MetaPoint| {
            shared.state.lock().expect("no panics hold this lock").meta = Some(point.clone());
            shared.changed.notify_all();
            on_meta(point);
        };
        let ran = self.run_sibling(job, action, submitted_at, &forward, &forward_meta);
        finish.done = Some(match &ran {
            Ok((computed, _)) => Ok(computed.clone()),
            Err(e) => Err(crate::terminal::error_chain(e)),
        });
        drop(finish);
        ran.map(|(computed, seconds)| (computed, Some(seconds)))
    }

    /// The cache's checked entry for `action`, if it holds one (a refused entry is counted
    /// and reported).
    fn lookup(&self, job: &Job, action: &Sha256) -> Option<Computed> {
        let cache = self.cache.as_ref()?;
        let own = (self.stored.lock())
            .expect("no panics hold this lock")
            .get(action)
            .cloned();
        let found = match own {
            Some(written) => cache.lookup_written(action, job, &written),
            None => cache.lookup(action, job),
        };
        match found {
            Lookup::Hit(hit) => Some(hit),
            Lookup::Miss => None,
            Lookup::Refused(why) => {
                self.counts.refused.fetch_add(1, Ordering::Relaxed);
                (self.on_refused)(&why);
                None
            }
        }
    }

    /// Waits for a job another machine's request is computing, passing on its bounds.
    fn follow(
        shared: &Shared,
        progress: &dyn Fn(u64),
        on_meta: &dyn Fn(MetaPoint),
    ) -> Result<Computed, ServiceError> {
        let mut given = 0;
        let mut meta_given = false;
        let mut state = shared.state.lock().expect("no panics hold this lock");
        loop {
            if let Some(done) = &state.done {
                return done.clone().map_err(ServiceError::Shared);
            }
            if let (false, Some(point)) = (meta_given, &state.meta) {
                meta_given = true;
                let point = point.clone();
                drop(state);
                on_meta(point);
                state = shared.state.lock().expect("no panics hold this lock");
                continue;
            }
            if state.bound > given {
                given = state.bound;
                drop(state);
                progress(given);
                state = shared.state.lock().expect("no panics hold this lock");
                continue;
            }
            state = shared
                .changed
                .wait(state)
                .expect("no panics hold this lock");
        }
    }

    /// Runs `job` in a sibling: its answer (kept in the cache when it gave a result) and the
    /// host seconds the sibling ran.
    fn run_sibling(
        &self,
        job: &Job,
        action: &Sha256,
        submitted_at: u64,
        progress: &dyn Fn(u64),
        on_meta: &dyn Fn(MetaPoint),
    ) -> Result<(Computed, f64), ServiceError> {
        let drive = sibling::input_drive(job, self.blobs, self.tool, self.floor)
            .map_err(ServiceError::Drive)?;
        // The first usable record counts; a record that does not parse as this job's is
        // no metadata point (deterministically: the sibling writes the same every time).
        let meta = std::cell::OnceCell::new();
        let yielded = |cycles: u64, record: Vec<u8>| {
            if meta.get().is_some() {
                return;
            }
            if let Ok(parsed) = super::wire::Meta::parse_record(&record, job) {
                let point = meta.get_or_init(|| MetaPoint {
                    cycles,
                    meta: parsed,
                });
                on_meta(point.clone());
            }
        };
        let (run, seconds) = {
            // Scouts find jobs before their build machine's time reaches them: the longest
            // chain goes first, each to its end. Else the build machine runs no further
            // than its earliest wall, so the sibling with the smallest wall goes first.
            let key = match &self.ranks {
                Some(ranks) => ranks.key(job),
                None => submitted_at,
            };
            let live = self.live.take(key);
            if live.held_back {
                self.counts.memory_waits.fetch_add(1, Ordering::Relaxed);
            }
            let core = self.cores.take(key);
            let progress = |c: u64| {
                progress(c);
                if self.ranks.is_none() {
                    core.reschedule(submitted_at.saturating_add(c));
                }
            };
            let started = std::time::Instant::now();
            let id = self.next_sibling.fetch_add(1, Ordering::Relaxed);
            (self.on_sibling)(job, SiblingEvent::Started(id));
            let _ended = SiblingGuard {
                service: self,
                job,
                id,
            };
            let run = self
                .runner
                .run(drive, &progress, &yielded)
                .map_err(ServiceError::Sibling)?;
            (run, started.elapsed().as_secs_f64())
        };
        self.counts.runs.fetch_add(1, Ordering::Relaxed);
        self.counts.cycles.fetch_add(run.cycles, Ordering::Relaxed);
        std::fs::create_dir_all(&self.scratch).map_err(ServiceError::Scratch)?;
        let unpacked = tempfile::tempdir_in(&self.scratch).map_err(ServiceError::Scratch)?;
        let response = match sibling::read_result(&run.output_drive, job, unpacked.path()) {
            Ok(result) => Response::Result(result),
            // The sibling is deterministic: it fails this way for this job every time.
            Err(e) => {
                (self.on_failed)(job, &e.to_string(), &run.console_tail);
                Response::Error(format!("the sibling gave no result: {e}"))
            }
        };
        let computed = Computed {
            response,
            cycles: run.cycles,
            sibling_root_hash: run.root_hash,
            meta: meta.into_inner(),
        };
        if let Some(cache) = &self.cache {
            if let Some(written) = cache.store(action, &computed)? {
                (self.stored.lock())
                    .expect("no panics hold this lock")
                    .insert(*action, written);
            }
        }
        Ok((computed, seconds))
    }
}

/// Whether `deps` (variables a dep-info says rustc read) holds a volatile one.
fn reads_volatile(deps: &std::collections::BTreeSet<String>) -> bool {
    deps.iter()
        .any(|name| VOLATILE_ENV.contains(&name.as_str()))
}

/// Whether a computed job read a volatile variable: its dep-info at its metadata point when
/// it has one, else in its result.
fn computed_reads_volatile(computed: &Computed) -> bool {
    match (&computed.meta, &computed.response) {
        (Some(point), _) => reads_volatile(&point.meta.env_deps()),
        (None, Response::Result(result)) => reads_volatile(&result.env_deps()),
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::job::{GuestPath, Input, Job, Platform};
    use crate::offload::wire::{JobResult, OutFile};
    use cmbuild_store::mirror::Mirror;
    use cmbuild_store::sha256::Sha256;
    use std::sync::atomic::AtomicUsize;

    /// A sibling that "compiles" by writing the sha256 of its input drive as an rlib,
    /// counting its runs and the most that ran at once.
    struct Fake {
        runs: AtomicUsize,
        running: AtomicUsize,
        most: AtomicUsize,
        fail: bool,
        /// Its dep-info says the crate read SOURCE_DATE_EPOCH.
        reads_date: bool,
        /// How long a run takes.
        millis: u64,
        /// It panics (a bug of the host's, in the middle of a run).
        panics: bool,
        /// It yields a metadata record at 2000 instructions (between its two bounds).
        meta: bool,
    }

    /// The dep-info file of the fake's crate: it read SOURCE_DATE_EPOCH or nothing.
    fn dep_info(reads_date: bool) -> OutFile {
        OutFile {
            path: GuestPath::new("/build/src/target/deps/a.d").unwrap(),
            exec: false,
            bytes: match reads_date {
                true => b"# env-dep:SOURCE_DATE_EPOCH\n".to_vec(),
                false => b"a.d: src/lib.rs\n".to_vec(),
            },
        }
    }

    /// The fake's `.rmeta` for an input drive.
    fn rmeta(input_drive: &[u8]) -> OutFile {
        OutFile {
            path: GuestPath::new("/build/src/target/deps/liba.rmeta").unwrap(),
            exec: false,
            bytes: format!("rmeta {}", Sha256::of(input_drive)).into_bytes(),
        }
    }

    impl SiblingRunner for Fake {
        fn run(
            &self,
            input_drive: Vec<u8>,
            progress: &dyn Fn(u64),
            meta: &dyn Fn(u64, Vec<u8>),
        ) -> Result<SiblingRun, String> {
            progress(1000);
            if self.meta {
                let record = crate::offload::wire::Meta {
                    stderr: b"{\"artifact\":\"liba.rmeta\",\"emit\":\"metadata\"}\n".to_vec(),
                    files: vec![dep_info(self.reads_date), rmeta(&input_drive)],
                };
                meta(2000, record.encode(None));
            }
            progress(4000);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(self.millis));
            assert!(!self.panics, "the fake sibling panics");
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.runs.fetch_add(1, Ordering::SeqCst);
            let mut result = JobResult {
                exit: 0,
                stdout: vec![],
                stderr: vec![],
                files: vec![OutFile {
                    path: GuestPath::new("/build/src/target/deps/liba.rlib").unwrap(),
                    exec: false,
                    bytes: Sha256::of(&input_drive).to_string().into_bytes(),
                }],
            };
            if self.meta {
                result.files.insert(0, dep_info(self.reads_date));
                result.files.push(rmeta(&input_drive));
            } else if self.reads_date {
                // Sorted by path: the dep-info file comes first.
                result.files.insert(0, dep_info(true));
            }
            let mut builder = tar::Builder::new(Vec::new());
            let (name, body): (&str, Vec<u8>) = match self.fail {
                false => ("result", result.encode()),
                true => ("error", b"sibling-run-job\n".to_vec()),
            };
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, &body[..]).unwrap();
            Ok(SiblingRun {
                output_drive: builder.into_inner().unwrap(),
                cycles: 4242,
                root_hash: format!("cmvm-sha256-v1:{}", "ef".repeat(32)),
                console_tail: String::new(),
            })
        }
    }

    fn fake(fail: bool) -> Fake {
        Fake {
            runs: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            fail,
            reads_date: false,
            millis: 30,
            panics: false,
            meta: false,
        }
    }

    fn dispatch(blobs: &BlobStore, source: &str) -> Dispatch {
        dated(blobs, source, None)
    }

    /// A dispatch, with SOURCE_DATE_EPOCH = `date` when given.
    fn dated(blobs: &BlobStore, source: &str, date: Option<&str>) -> Dispatch {
        let env: Vec<(&str, &str)> = date.map(|d| ("SOURCE_DATE_EPOCH", d)).into_iter().collect();
        with_env(blobs, source, &env)
    }

    /// A dispatch whose job has the environment `env`.
    fn with_env(blobs: &BlobStore, source: &str, env: &[(&str, &str)]) -> Dispatch {
        let job = Job {
            argv: vec!["rustc".into()],
            cwd: GuestPath::new("/build/src").unwrap(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            inputs: vec![Input {
                exec: false,
                path: GuestPath::new("/build/src/lib.rs").unwrap(),
                sha256: blobs.put(source.as_bytes()).unwrap(),
                size: source.len() as u64,
            }],
            outputs: vec![GuestPath::new("/build/src/target/deps").unwrap()],
        };
        let platform = Platform {
            latency: 1,
            scheme: "cmvm-sha256-v1".into(),
            template: "cmvm-sha256-v1:00".into(),
            tool: Sha256::of(b"tool"),
            floor: None,
        };
        Dispatch {
            tag: 1,
            submitted_at: 0,
            action: job.action_digest(&platform),
            first: job
                .without_volatile_env()
                .map(|first| (first.clone(), first.action_digest(&platform))),
            job,
            scout: false,
            reach: Default::default(),
        }
    }

    /// A service over `cache` running at most two siblings at once.
    fn two_siblings<'a>(
        blobs: &'a BlobStore,
        cache: ActionCache,
        runner: &'a Fake,
        dir: &tempfile::TempDir,
    ) -> Service<'a> {
        Service::new(
            blobs,
            b"tool",
            Some(cache),
            runner,
            2,
            dir.path().join("scratch"),
        )
    }

    /// A scratch directory with a blob store and a mirror's action cache in it.
    fn stores() -> (tempfile::TempDir, BlobStore, ActionCache) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let cache = ActionCache::new(Mirror::open(dir.path().join("mirror")).unwrap());
        (dir, blobs, cache)
    }

    #[test]
    fn the_next_release_reuses_a_job_unless_the_crate_read_the_date() {
        let (dir, blobs, cache) = stores();
        let runner = fake(false);
        let service = Service::new(
            &blobs,
            b"tool",
            Some(cache.clone()),
            &runner,
            1,
            dir.path().join("s"),
        );
        let v1 = dated(&blobs, "pub fn a() {}", Some("1767225600"));
        let (action, first) = service.compute(&v1, &|_| {}, &|_| {}).unwrap();
        assert_eq!(action, v1.first.as_ref().unwrap().1, "run without the date");
        let v2 = dated(&blobs, "pub fn a() {}", Some("1767312000"));
        assert_ne!(v2.action, v1.action);
        let (action2, again) = service.compute(&v2, &|_| {}, &|_| {}).unwrap();
        assert_eq!((action2, &again), (action, &first));
        assert_eq!(
            runner.runs.load(Ordering::SeqCst),
            1,
            "the next release hits the cache"
        );

        let reader = Fake {
            reads_date: true,
            ..fake(false)
        };
        let service = Service::new(
            &blobs,
            b"tool",
            Some(cache),
            &reader,
            1,
            dir.path().join("s"),
        );
        let v1 = dated(&blobs, "pub fn b() {}", Some("1767225600"));
        let bounds = Mutex::new(Vec::new());
        let (action, computed) = service
            .compute(&v1, &|c| bounds.lock().unwrap().push(c), &|_| {})
            .unwrap();
        assert_eq!(action, v1.action, "a crate that read the date runs with it");
        assert_eq!(reader.runs.load(Ordering::SeqCst), 2);
        // Its C is both runs', and every bound given while they ran holds for it.
        assert_eq!(computed.cycles, 2 * 4242);
        assert_eq!(
            bounds.into_inner().unwrap(),
            [1000, 4000, 4242 + 1000, 4242 + 4000]
        );
        let v2 = dated(&blobs, "pub fn b() {}", Some("1767312000"));
        let (action, _) = service.compute(&v2, &|_| {}, &|_| {}).unwrap();
        assert_eq!(action, v2.action);
        assert_eq!(
            reader.runs.load(Ordering::SeqCst),
            3,
            "and is not reused across dates"
        );
    }

    #[test]
    fn a_metadata_point_is_handed_on_while_the_job_runs_and_kept_in_the_cache() {
        let (dir, blobs, cache) = stores();
        let runner = Fake {
            meta: true,
            ..fake(false)
        };
        let service = Service::new(
            &blobs,
            b"tool",
            Some(cache.clone()),
            &runner,
            1,
            dir.path().join("s"),
        );
        let job = dated(&blobs, "pub fn a() {}", Some("1767225600"));
        // What the service hands on, in order: bounds and the metadata point.
        let said = Mutex::new(Vec::new());
        let run = |service: &Service| {
            said.lock().unwrap().clear();
            let computed = service
                .compute(
                    &job,
                    &|c| said.lock().unwrap().push(format!("bound {c}")),
                    &|p| said.lock().unwrap().push(format!("meta {}", p.cycles)),
                )
                .unwrap()
                .1;
            (computed, said.lock().unwrap().clone())
        };
        let (cold, cold_said) = run(&service);
        assert_eq!(cold_said, ["bound 1000", "meta 2000", "bound 4000"]);
        let point = cold.meta.clone().expect("a metadata point");
        assert_eq!(point.cycles, 2000);
        assert_eq!(point.meta.files.len(), 2, "{point:?}");
        // The rmeta handed on early is the one in the result.
        let Response::Result(result) = &cold.response else {
            panic!("{cold:?}")
        };
        assert!(result.files.contains(&point.meta.files[1]));
        // From the cache: the same point, handed on before the answer.
        let (warm, warm_said) = run(&service);
        assert_eq!(
            (&warm, &warm_said[..]),
            (&cold, &["meta 2000".to_string()][..])
        );
        assert_eq!(runner.runs.load(Ordering::SeqCst), 1);
        // A tampered metadata record is refused and the job recomputed.
        let entry = std::fs::read_to_string(
            dir.path()
                .join("mirror/offload")
                .join(format!("{}.json", job.first.as_ref().unwrap().1)),
        )
        .unwrap();
        let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
        let record: cmbuild_store::cid::Cid =
            entry["meta"]["record"].as_str().unwrap().parse().unwrap();
        let mirror = Mirror::open(dir.path().join("mirror")).unwrap();
        let blob = mirror.blob_path(&record);
        let mut bytes = std::fs::read(&blob).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&blob, bytes).unwrap();
        let (again, _) = run(&service);
        assert_eq!(again, cold);
        assert_eq!(service.counts.refused.load(Ordering::SeqCst), 1);
        assert_eq!(runner.runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_first_runs_metadata_is_not_handed_on_when_its_dep_info_read_the_date() {
        let (dir, blobs, _) = stores();
        let runner = Fake {
            meta: true,
            reads_date: true,
            ..fake(false)
        };
        let service = Service::new(&blobs, b"tool", None, &runner, 1, dir.path().join("s"));
        let job = dated(&blobs, "pub fn b() {}", Some("1767225600"));
        let said = Mutex::new(Vec::new());
        let (action, computed) = service
            .compute(
                &job,
                &|c| said.lock().unwrap().push(format!("bound {c}")),
                &|p| said.lock().unwrap().push(format!("meta {}", p.cycles)),
            )
            .unwrap();
        assert_eq!(action, job.action, "it ran again with the date");
        // The second run's point, after the first run's whole count; bounds keep rising.
        assert_eq!(
            said.into_inner().unwrap(),
            [
                "bound 1000",
                "bound 4000",
                "bound 5242",
                "meta 6242",
                "bound 8242"
            ]
        );
        assert_eq!(computed.meta.unwrap().cycles, 4242 + 2000);
        assert_eq!(computed.cycles, 2 * 4242);
    }

    /// A proc macro's compile asked for by the x86_64 build machine and the aarch64 one at
    /// once (their jobs differ in `TARGETS` and `RUSTFLAGS` only) runs once, in flight for
    /// both, and the riscv64 machine's later one comes from the cache: the same answer each.
    #[test]
    fn the_build_machines_of_a_release_share_the_jobs_compiled_for_the_guest() {
        let (dir, blobs, cache) = stores();
        let runner = Fake {
            millis: 300,
            ..fake(false)
        };
        let service = two_siblings(&blobs, cache, &runner, &dir);
        let in_machine = |triple: &str| {
            let flags = format!("-C link-arg=--target={triple}");
            with_env(
                &blobs,
                "pub fn derive() {}",
                &[
                    ("SOURCE_DATE_EPOCH", "1767225600"),
                    ("TARGETS", triple),
                    ("RUSTFLAGS", &flags),
                ],
            )
        };
        let (x86, arm) = (in_machine("x86_64"), in_machine("aarch64"));
        assert_ne!(x86.action, arm.action);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| service.compute(&x86, &|_| {}, &|_| {}).unwrap());
            let b = s.spawn(|| service.compute(&arm, &|_| {}, &|_| {}).unwrap());
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!(a, b);
        let riscv = service
            .compute(&in_machine("riscv64"), &|_| {}, &|_| {})
            .unwrap();
        assert_eq!(riscv, a);
        assert_eq!(runner.runs.load(Ordering::SeqCst), 1, "computed once");
        assert_eq!(runner.most.load(Ordering::SeqCst), 1);
        let counts = &service.counts;
        assert_eq!(
            counts.shared.load(Ordering::SeqCst),
            1,
            "one followed it in flight"
        );
        assert_eq!(
            counts.hits.load(Ordering::SeqCst),
            1,
            "one found it in the cache"
        );
    }

    #[test]
    fn a_job_a_scout_started_is_the_build_machines_and_counted_as_found_ahead() {
        let (dir, blobs, cache) = stores();
        let runner = fake(false);
        let service = two_siblings(&blobs, cache, &runner, &dir);
        let job = dispatch(&blobs, "pub fn a() {}");
        let scouted = Dispatch {
            scout: true,
            submitted_at: 77,
            ..job.clone()
        };
        let ahead = service.compute(&scouted, &|_| {}, &|_| {}).unwrap();
        let asked = service.compute(&job, &|_| {}, &|_| {}).unwrap();
        assert_eq!(ahead, asked, "the same answer whoever asked first");
        assert_eq!(runner.runs.load(Ordering::SeqCst), 1);
        let counts = &service.counts;
        assert_eq!(counts.prefetched.load(Ordering::SeqCst), 1);
        assert_eq!(counts.hits.load(Ordering::SeqCst), 0, "not the cache's");
        // A scout's own lookup of a job already computed counts nothing.
        service.compute(&scouted, &|_| {}, &|_| {}).unwrap();
        assert_eq!(counts.hits.load(Ordering::SeqCst), 0);
        assert_eq!(counts.prefetched.load(Ordering::SeqCst), 1);
        assert_eq!(counts.runs.load(Ordering::SeqCst), 1);
        assert_eq!(counts.cycles.load(Ordering::SeqCst), 4242, "counted once");
    }

    /// `run --recompute-jobs` reads no entry it did not write, but computes each job once:
    /// a job its scout computed ahead, or asked for again (another triple's identical
    /// build script), comes from its own result; the next run computes it again.
    #[test]
    fn a_write_only_cache_gives_back_what_this_run_computed_and_nothing_else() {
        let (dir, blobs, cache) = stores();
        let mirror = Mirror::open(dir.path().join("mirror")).unwrap();
        let runner = fake(false);
        let run = |cache| two_siblings(&blobs, cache, &runner, &dir);
        let job = dispatch(&blobs, "pub fn a() {}");
        let earlier = run(cache);
        let first = earlier.compute(&job, &|_| {}, &|_| {}).unwrap();
        assert_eq!(runner.runs.load(Ordering::SeqCst), 1);

        let service = run(ActionCache::write_only(mirror.clone()));
        let scouted = Dispatch {
            scout: true,
            ..job.clone()
        };
        let ahead = service.compute(&scouted, &|_| {}, &|_| {}).unwrap();
        assert_eq!(
            runner.runs.load(Ordering::SeqCst),
            2,
            "the earlier run's entry is not read"
        );
        let asked = service.compute(&job, &|_| {}, &|_| {}).unwrap();
        let again = service.compute(&job, &|_| {}, &|_| {}).unwrap();
        assert_eq!((&ahead, &asked, &again), (&first, &first, &first));
        assert_eq!(
            runner.runs.load(Ordering::SeqCst),
            2,
            "computed once in this run"
        );
        assert_eq!(service.counts.prefetched.load(Ordering::SeqCst), 2);
        // Not started by a scout: computed, then taken from this run's entry.
        let other = dispatch(&blobs, "pub fn b() {}");
        let computed = service.compute(&other, &|_| {}, &|_| {}).unwrap();
        assert_eq!(service.compute(&other, &|_| {}, &|_| {}).unwrap(), computed);
        assert_eq!(runner.runs.load(Ordering::SeqCst), 3);
        assert_eq!(service.counts.hits.load(Ordering::SeqCst), 1);
        // Its entry replaced meanwhile by another for the same action: refused, computed
        // again, the run's own answer.
        let (other_action, mut forged) = computed.clone();
        forged.cycles += 1;
        ActionCache::new(mirror.clone())
            .store(&other_action, &forged)
            .unwrap();
        assert_eq!(service.compute(&other, &|_| {}, &|_| {}).unwrap(), computed);
        assert_eq!(runner.runs.load(Ordering::SeqCst), 4);
        assert_eq!(service.counts.refused.load(Ordering::SeqCst), 1);

        let next = run(ActionCache::write_only(mirror));
        next.compute(&job, &|_| {}, &|_| {}).unwrap();
        assert_eq!(
            runner.runs.load(Ordering::SeqCst),
            5,
            "a later run computes it again"
        );
    }

    #[test]
    fn the_user_is_told_when_each_sibling_starts_and_ends_even_if_it_fails() {
        let (dir, blobs, cache) = stores();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let events = |service: &mut Service<'_>| {
            let seen = seen.clone();
            service.on_sibling =
                Box::new(move |job, e| seen.lock().unwrap().push((job.crate_name().to_owned(), e)));
        };
        let runner = fake(false);
        let mut service = Service::new(
            &blobs,
            b"tool",
            Some(cache.clone()),
            &runner,
            2,
            dir.path().join("scratch"),
        );
        events(&mut service);
        let job = dispatch(&blobs, "pub fn a() {}");
        service.compute(&job, &|_| {}, &|_| {}).unwrap();
        // From the cache: no sibling.
        service.compute(&job, &|_| {}, &|_| {}).unwrap();
        let other = dispatch(&blobs, "pub fn b() {}");
        service.compute(&other, &|_| {}, &|_| {}).unwrap();
        let name = job.job.crate_name().to_owned();
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (name.clone(), SiblingEvent::Started(0)),
                (name.clone(), SiblingEvent::Ended(0)),
                (name.clone(), SiblingEvent::Started(1)),
                (name.clone(), SiblingEvent::Ended(1)),
            ]
        );
        // A sibling whose run fails (here the host's runner panics) ends too.
        seen.lock().unwrap().clear();
        let panicking = Fake {
            panics: true,
            ..fake(false)
        };
        let mut service = Service::new(
            &blobs,
            b"tool",
            None,
            &panicking,
            2,
            dir.path().join("scratch"),
        );
        events(&mut service);
        let third = dispatch(&blobs, "pub fn c() {}");
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            service.compute(&third, &|_| {}, &|_| {})
        }));
        assert!(ran.is_err());
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (name.clone(), SiblingEvent::Started(0)),
                (name, SiblingEvent::Ended(0)),
            ]
        );
    }

    #[test]
    fn jobs_run_once_then_come_from_the_cache_with_the_same_answer() {
        let (dir, blobs, cache) = stores();
        let runner = fake(false);
        let mut service = Service::new(
            &blobs,
            b"tool",
            Some(cache.clone()),
            &runner,
            2,
            dir.path().join("scratch"),
        );
        let done = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = done.clone();
        service.on_done = Box::new(move |_, d| seen.lock().unwrap().push((d.cached, d.cycles)));
        let job = dispatch(&blobs, "pub fn a() {}");
        let cold = service.compute(&job, &|_| {}, &|_| {}).unwrap().1;
        let warm = service.compute(&job, &|_| {}, &|_| {}).unwrap().1;
        assert_eq!(cold, warm);
        assert_eq!(*done.lock().unwrap(), [(false, 4242), (true, 4242)]);
        assert_eq!(runner.runs.load(Ordering::SeqCst), 1);
        assert_eq!(service.counts.hits.load(Ordering::SeqCst), 1);
        assert_eq!(cold.cycles, 4242);
        // A tampered entry is refused and recomputed, giving the same answer.
        let entry = dir
            .path()
            .join("mirror/offload")
            .join(format!("{}.json", job.action));
        let text = std::fs::read_to_string(&entry)
            .unwrap()
            .replace("4242", "4243");
        std::fs::write(&entry, text).unwrap();
        let lied = match cache.lookup(&job.action, &job.job) {
            Lookup::Hit(hit) => hit.cycles,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            lied, 4243,
            "a consistent forgery of C passes the local checks"
        );
        let mut bytes = std::fs::read(&entry).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&entry, bytes).unwrap();
        let again = service.compute(&job, &|_| {}, &|_| {}).unwrap().1;
        assert_eq!(again, cold);
        assert_eq!(service.counts.refused.load(Ordering::SeqCst), 1);
        assert_eq!(runner.runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn at_most_jobs_siblings_run_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let runner = fake(false);
        let service = Service::new(
            &blobs,
            b"tool",
            None,
            &runner,
            2,
            dir.path().join("scratch"),
        );
        let jobs: Vec<Dispatch> = (0..8)
            .map(|i| dispatch(&blobs, &format!("fn f{i}() {{}}")))
            .collect();
        std::thread::scope(|scope| {
            for job in &jobs {
                let service = &service;
                scope.spawn(move || service.compute(job, &|_| {}, &|_| {}).unwrap());
            }
        });
        assert_eq!(runner.runs.load(Ordering::SeqCst), 8);
        assert_eq!(runner.most.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_identical_job_in_flight_is_waited_for_not_run_again() {
        for cached in [true, false] {
            let (dir, blobs, cache) = stores();
            // Long enough for the three threads to ask while it runs.
            let runner = Fake {
                millis: 500,
                ..fake(false)
            };
            let service = Service::new(
                &blobs,
                b"tool",
                cached.then_some(cache),
                &runner,
                4,
                dir.path().join("scratch"),
            );
            let job = dispatch(&blobs, "pub fn a() {}");
            let bounds: Vec<Mutex<Vec<u64>>> = (0..3).map(|_| Mutex::default()).collect();
            let answers: Vec<Computed> = std::thread::scope(|scope| {
                let asked: Vec<_> = bounds
                    .iter()
                    .map(|b| {
                        let (service, job) = (&service, &job);
                        scope.spawn(move || {
                            service
                                .compute(job, &|c| b.lock().unwrap().push(c), &|_| {})
                                .unwrap()
                                .1
                        })
                    })
                    .collect();
                asked.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let runs = runner.runs.load(Ordering::SeqCst);
            let shared = service.counts.shared.load(Ordering::SeqCst);
            let hits = service.counts.hits.load(Ordering::SeqCst);
            assert_eq!(runs, 1, "cached {cached}: one sibling for the three");
            assert_eq!(shared + hits, 2);
            assert!(answers.iter().all(|a| *a == answers[0]));
            // Whoever waited saw bounds that hold for the answer, rising.
            for b in &bounds {
                let b = b.lock().unwrap();
                assert!(b.windows(2).all(|w| w[0] <= w[1]), "{b:?}");
                assert!(b.iter().all(|&c| c <= answers[0].cycles), "{b:?}");
            }
        }
    }

    #[test]
    fn a_job_whose_computation_panics_does_not_leave_its_followers_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let runner = Fake {
            millis: 300,
            panics: true,
            ..fake(false)
        };
        let service = Service::new(&blobs, b"tool", None, &runner, 2, dir.path().join("s"));
        let job = dispatch(&blobs, "pub fn a() {}");
        let ends: Vec<_> = std::thread::scope(|scope| {
            let asked: Vec<_> = (0..2)
                .map(|_| {
                    let (service, job) = (&service, &job);
                    scope.spawn(move || {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            service.compute(job, &|_| {}, &|_| {})
                        }))
                    })
                })
                .collect();
            asked.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let panicked = ends.iter().filter(|e| e.is_err()).count();
        let told = ends
            .iter()
            .filter(|e| matches!(e, Ok(Err(ServiceError::Shared(_)))))
            .count();
        assert_eq!((panicked, told), (1, 1), "{ends:?}");
        assert!(service.in_flight.lock().unwrap().is_empty());
    }

    #[test]
    fn a_free_slot_goes_to_the_earliest_submitted_job() {
        let permits = Slots::new(1);
        let order = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            let held = permits.take(0);
            for at in [30, 10, 20] {
                let (permits, order) = (&permits, &order);
                scope.spawn(move || {
                    let _slot = permits.take(at);
                    order.lock().unwrap().push(at);
                });
            }
            while permits.state.lock().unwrap().waiting.len() < 3 {
                std::thread::yield_now();
            }
            drop(held);
        });
        assert_eq!(order.into_inner().unwrap(), [10, 20, 30]);
    }

    #[test]
    fn a_second_sibling_waits_for_the_memory_gate_and_the_first_never_does() {
        let memory = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut live = Slots::new(4);
        let probe = memory.clone();
        live.gate = Some(crate::memory::MemoryGate::new(3 << 30, move || {
            Some(probe.load(Ordering::SeqCst))
        }));
        // No memory to spare, but none is live: the first starts (the build goes on).
        let first = live.take(0);
        assert!(!first.held_back);
        std::thread::scope(|scope| {
            let second = scope.spawn(|| {
                let slot = live.take(1);
                let held_back = slot.held_back;
                drop(slot);
                held_back
            });
            // Free slots, but no memory: the second waits for it (asking again and again)...
            while live.state.lock().unwrap().waiting.is_empty() {
                std::thread::yield_now();
            }
            std::thread::sleep(GATE_POLL * 3);
            assert_eq!(live.state.lock().unwrap().waiting.len(), 1);
            assert!(!second.is_finished());
            // ...and starts once the host has it, with the first still live.
            memory.store(4 << 30, Ordering::SeqCst);
            assert!(second.join().unwrap());
        });
        // Or once the first ends, memory or not.
        memory.store(0, Ordering::SeqCst);
        std::thread::scope(|scope| {
            let second = scope.spawn(|| live.take(1).held_back);
            while live.state.lock().unwrap().waiting.is_empty() {
                std::thread::yield_now();
            }
            drop(first);
            assert!(second.join().unwrap());
        });
        // Without a gate, as many as there are slots.
        let ungated = Slots::new(2);
        let (a, b) = (ungated.take(0), ungated.take(1));
        assert!(!a.held_back && !b.held_back);
    }

    #[test]
    fn a_running_sibling_gives_its_core_to_a_smaller_wall() {
        let cores = Slots::new(1);
        let order = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            let core = cores.take(0);
            let (cores, order) = (&cores, &order);
            scope.spawn(move || {
                let _core = cores.take(150);
                order.lock().unwrap().push("waiter at 150");
            });
            while cores.state.lock().unwrap().waiting.is_empty() {
                std::thread::yield_now();
            }
            core.reschedule(100);
            order.lock().unwrap().push("runner at 100");
            core.reschedule(200);
            order.lock().unwrap().push("runner at 200");
        });
        assert_eq!(
            order.into_inner().unwrap(),
            ["runner at 100", "waiter at 150", "runner at 200"]
        );
        let state = cores.state.lock().unwrap();
        assert_eq!((state.free, state.waiting.len()), (1, 0));
    }

    #[test]
    fn a_sibling_without_a_result_is_an_error_answer_and_not_cached() {
        let (dir, blobs, cache) = stores();
        let runner = fake(true);
        let service = Service::new(
            &blobs,
            b"tool",
            Some(cache),
            &runner,
            1,
            dir.path().join("scratch"),
        );
        let job = dispatch(&blobs, "pub fn a() {}");
        let first = service.compute(&job, &|_| {}, &|_| {}).unwrap().1;
        assert!(matches!(first.response, Response::Error(_)), "{first:?}");
        assert_eq!(first.cycles, 4242);
        assert_eq!(service.compute(&job, &|_| {}, &|_| {}).unwrap().1, first);
        assert_eq!(runner.runs.load(Ordering::SeqCst), 2);
    }
}
