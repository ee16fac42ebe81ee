//! The offload channel (`cmbuild,offload-channel-v1`): the guest hands a job to the host
//! and sees the answer at an `mcycle` the host names, never at one the host's timing picks.
//!
//! An optional device ([`crate::machine::MachineConfig::offload`]); the default board has
//! none, so its state hashes are unchanged. The design is `docs/parallel-builds.md`. The
//! guest reaches it through the registers below or, on a board configured so, through a
//! virtio console ([`super::virtio_console`]) over the same timing core.
//!
//! # Timing (the whole point)
//! A request submitted by a store that retires at `mcycle` `T - 1` is *submitted at* `T`.
//! Its response may become visible no earlier than `E = T + min_latency` (`min_latency >= 1`
//! is a constant of the board, readable by the guest). The host answers with bytes and a
//! `visible_at >= E`; the response enters the completion queue, and the interrupt line
//! rises, exactly when `mcycle` reaches `visible_at`, before the instruction at that cycle.
//!
//! The guest can never tell *when* the host answered:
//! - An answered response is an event at `visible_at`, like a timer deadline: the run
//!   loop stops there to deliver it, and a WFI wakes there.
//! - An unanswered request is a wall at `E - 1`: the machine does not run past it, exactly
//!   as `run(E - 1)` would not (a WFI asleep there does not retire), and the run loop
//!   returns [`crate::machine::Break::OffloadWaiting`] until the host answers. Since no
//!   response can be visible before `E`, the state at every cycle up to `E - 1` is the same
//!   whether or not the host has answered, and a run stopped at any cycle continues like an
//!   uninterrupted one.
//! - The host may *promise* that request `tag` has no answer before a later cycle
//!   ([`OffloadChannel::promise`]: cmbuild promises `T + L + c` while the job's sibling has
//!   run `c` instructions and not halted, since its answer comes at `T + L + C`, `C >= c`).
//!   The request's earliest, and so its wall, moves there; an answer earlier than a promise
//!   is refused. A promise only says how far the machine may run before the answer is
//!   known: it changes no state at any cycle (a run without promises, waiting at every
//!   wall, passes through the same states).
//! - An answer not yet visible is not state: it is neither hashed nor stored in snapshots
//!   (it is the host's, in flight). The state hash at any `mcycle` is therefore a function
//!   of the guest's history alone. After a snapshot is loaded, the host answers again (the
//!   same answer: it is a function of the request, for cmbuild a cache lookup).
//!
//! # Registers
//! 64-bit registers; loads of 8 bytes, or of 4 bytes from either half, except where noted.
//! Stores of 8 bytes except where noted; stores to read-only registers are ignored, and
//! accesses of other sizes or alignments fault.
//!
//! | offset | name | access | |
//! |---|---|---|---|
//! | `0x00` | `ID` | R | [`MAGIC`] in the low half, [`VERSION`] in the high half |
//! | `0x08` | `MIN_LATENCY` | R | cycles from submission to the earliest visible response |
//! | `0x10` | `REQ_DATA` | W (1, 2, 4, 8) | appends the stored bytes (little-endian) to the request being written |
//! | `0x18` | `REQ_LEN` | R/W | bytes of the request being written; any store empties it |
//! | `0x20` | `SUBMIT` | W | submits the request being written with the stored value as its tag, and empties it |
//! | `0x28` | `STATUS` | R | bit 0: the completion queue is not empty; bit 1: the last `SUBMIT` was refused |
//! | `0x30` | `IN_FLIGHT` | R | requests submitted and not yet delivered |
//! | `0x38` | `COMP_TAG` | R | tag of the completion at the head of the queue (0 if empty) |
//! | `0x40` | `COMP_LEN` | R | its length in bytes (0 if empty) |
//! | `0x48` | `COMP_DATA` | R (1, 2, 4, 8) | its next bytes (little-endian) from the read cursor, which advances; 0 past the end |
//! | `0x50` | `COMP_POP` | W | drops the head completion (its tag is free again) |
//! | `0x58` | `IRQ_ENABLE` | R/W | bit 0: the interrupt line is high while the queue is not empty |
//! | `0x60` | `COMP_AT` | R | the `mcycle` at which the head completion became visible |
//! | `0x68` | `COMP_CURSOR` | R/W | the read cursor of the head completion |
//!
//! A `SUBMIT` is refused (and the request discarded, `STATUS` bit 1 set until the next
//! `SUBMIT`) when its tag is in flight or still in the completion queue, when
//! [`MAX_JOBS`] tags are in use, or when the request grew past [`MAX_REQUEST`] bytes (the
//! bytes past it were dropped). Completions are queued in the order they became visible
//! (`visible_at`, then submission order).
//!
//! # Journal
//! Each delivery folds a record into a 32-byte journal kept in the state (so the state
//! hash covers every job the machine ever received): `journal = SHA-256(JOURNAL_DOMAIN ||
//! journal || tag || submitted_at || visible_at || SHA-256(request) || SHA-256(response) ||
//! record)`, integers as 8 little-endian bytes, `record` the host's 32-byte commitment to
//! how it computed the answer (cmbuild: the job's input hash, sibling root hash, cycles).

use std::collections::{BTreeMap, VecDeque};

use sha2::{Digest, Sha256};

use super::virtio_console::{self, Dma, VirtioConsole};
use super::{Device, MmioContext};
use crate::fdt::{self, FdtWriter};
use crate::state::{put_u64, put_u8, Reader, StateError};

/// `ID` low half: "cmof" little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"cmof");
/// `ID` high half: the register interface version.
pub const VERSION: u32 = 1;
/// Largest request in bytes.
pub const MAX_REQUEST: u64 = 1 << 20;
/// Largest response in bytes.
pub const MAX_RESPONSE: u64 = 1 << 30;
/// Most tags in use at once (in flight or in the completion queue).
pub const MAX_JOBS: usize = 64;
/// First field of the channel's saved state (it follows the board's devices, which is how
/// a machine's state says that it has the channel).
pub const STATE_MAGIC: u64 = u64::from_le_bytes(*b"CMOFLST1");
/// Domain separator of the journal.
pub const JOURNAL_DOMAIN: &[u8] = b"cmbuild offload journal v1";

/// Register offsets (see the module documentation).
pub mod reg {
    /// `ID`.
    pub const ID: u64 = 0x00;
    /// `MIN_LATENCY`.
    pub const MIN_LATENCY: u64 = 0x08;
    /// `REQ_DATA`.
    pub const REQ_DATA: u64 = 0x10;
    /// `REQ_LEN`.
    pub const REQ_LEN: u64 = 0x18;
    /// `SUBMIT`.
    pub const SUBMIT: u64 = 0x20;
    /// `STATUS`.
    pub const STATUS: u64 = 0x28;
    /// `IN_FLIGHT`.
    pub const IN_FLIGHT: u64 = 0x30;
    /// `COMP_TAG`.
    pub const COMP_TAG: u64 = 0x38;
    /// `COMP_LEN`.
    pub const COMP_LEN: u64 = 0x40;
    /// `COMP_DATA`.
    pub const COMP_DATA: u64 = 0x48;
    /// `COMP_POP`.
    pub const COMP_POP: u64 = 0x50;
    /// `IRQ_ENABLE`.
    pub const IRQ_ENABLE: u64 = 0x58;
    /// `COMP_AT`.
    pub const COMP_AT: u64 = 0x60;
    /// `COMP_CURSOR`.
    pub const COMP_CURSOR: u64 = 0x68;
}

/// `STATUS` bit 0: the completion queue is not empty.
pub const STATUS_COMPLETION: u64 = 1;
/// `STATUS` bit 1: the last `SUBMIT` was refused.
pub const STATUS_REFUSED: u64 = 2;

/// How the guest reaches the channel (a board option; both share the timing core, the
/// window at [`crate::board::OFFLOAD_BASE`] and PLIC source [`crate::board::OFFLOAD_IRQ`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// The register interface of this module (`cmbuild,offload-channel-v1`): programmed
    /// I/O, for bare-metal guests and tests.
    #[default]
    Registers,
    /// A virtio console over virtio-mmio ([`super::virtio_console`]): what Linux drives.
    VirtioConsole,
}

/// A request submitted and not yet delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// Submission order (0, 1, ...).
    pub seq: u64,
    /// `mcycle` of submission (right after the `SUBMIT` store).
    pub submitted_at: u64,
    /// The request's bytes.
    pub request: Vec<u8>,
}

/// A delivered response the guest has not popped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The request's tag.
    pub tag: u64,
    /// `mcycle` at which it became visible.
    pub visible_at: u64,
    /// The response's bytes.
    pub response: Vec<u8>,
}

/// The host's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `mcycle` at which the response becomes visible (at least the request's
    /// [`OffloadChannel::earliest`]).
    pub visible_at: u64,
    /// The response's bytes (at most [`MAX_RESPONSE`]).
    pub response: Vec<u8>,
    /// The host's 32-byte commitment to how it computed the answer, folded into the
    /// journal at delivery.
    pub record: [u8; 32],
}

/// Why the host's answer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OffloadError {
    /// the machine has no offload channel
    #[error("the machine has no offload channel")]
    NoChannel,
    /// no request with tag {0} is in flight
    #[error("no request with tag {0} is in flight")]
    UnknownTag(u64),
    /// request {0} has an answer already
    #[error("request {0} has an answer already")]
    AlreadyAnswered(u64),
    /// an answer to request {tag} visible at mcycle {visible_at} is earlier than its earliest, {earliest}
    #[error(
        "an answer to request {tag} visible at mcycle {visible_at} is earlier than its earliest, {earliest}"
    )]
    TooEarly {
        /// The request.
        tag: u64,
        /// What the answer named.
        visible_at: u64,
        /// The earliest allowed.
        earliest: u64,
    },
    /// an answer visible at mcycle {visible_at} comes after the machine passed it (mcycle {mcycle})
    #[error(
        "an answer visible at mcycle {visible_at} comes after the machine passed it (mcycle {mcycle})"
    )]
    Passed {
        /// What the answer named.
        visible_at: u64,
        /// The machine's `mcycle`.
        mcycle: u64,
    },
    /// a response of {0} bytes is larger than the channel's limit
    #[error("a response of {0} bytes is larger than the channel's limit")]
    TooLarge(u64),
}

/// The offload channel: the guest-visible state (saved and hashed) and the host's answers
/// in flight (neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadChannel {
    min_latency: u64,
    irq_enable: bool,
    refused: bool,
    next_seq: u64,
    /// The request being written.
    pending: Vec<u8>,
    /// Whether `pending` overflowed [`MAX_REQUEST`].
    overflowed: bool,
    in_flight: BTreeMap<u64, InFlight>,
    completions: VecDeque<Completion>,
    cursor: u64,
    journal: [u8; 32],
    delivered: u64,
    /// Answers the host gave for requests in flight, by tag. Not state.
    answers: BTreeMap<u64, Answer>,
    /// The host's promises: no answer to the request before this cycle, by tag. Not state.
    promised: BTreeMap<u64, u64>,
    /// Tags of submissions the run loop has not reported yet, oldest first. Not state
    /// (like HTIF's yield).
    pub(crate) submitted: VecDeque<u64>,
    /// The virtio-console transport ([`super::virtio_console`]), or `None` for the
    /// register interface above.
    pub(crate) virtio: Option<Box<VirtioConsole>>,
}

impl OffloadChannel {
    /// A channel at reset whose responses come at least `min_latency` cycles (>= 1) after
    /// their request.
    pub fn new(min_latency: u64) -> Self {
        assert!(
            min_latency >= 1,
            "the offload channel's min_latency is >= 1"
        );
        Self {
            min_latency,
            irq_enable: false,
            refused: false,
            next_seq: 0,
            pending: Vec::new(),
            overflowed: false,
            in_flight: BTreeMap::new(),
            completions: VecDeque::new(),
            cursor: 0,
            journal: [0; 32],
            delivered: 0,
            answers: BTreeMap::new(),
            promised: BTreeMap::new(),
            submitted: VecDeque::new(),
            virtio: None,
        }
    }

    /// A channel at reset with the virtio-console transport ([`super::virtio_console`])
    /// instead of the register interface.
    pub fn new_virtio(min_latency: u64) -> Self {
        Self {
            virtio: Some(Box::default()),
            ..Self::new(min_latency)
        }
    }

    /// A channel at reset with `transport`.
    pub fn with_transport(min_latency: u64, transport: Transport) -> Self {
        match transport {
            Transport::Registers => Self::new(min_latency),
            Transport::VirtioConsole => Self::new_virtio(min_latency),
        }
    }

    /// Whether the channel's transport is the virtio console.
    pub fn is_virtio(&self) -> bool {
        self.virtio.is_some()
    }

    /// The virtio-console transport, if that is the channel's.
    pub fn virtio(&self) -> Option<&VirtioConsole> {
        self.virtio.as_deref()
    }

    /// A load from the channel's window, for either transport; `None` faults.
    pub(crate) fn mmio_read(&mut self, offset: u64, size: u32) -> Option<u64> {
        match &self.virtio {
            Some(v) => v.read(offset, size),
            None => self.read(offset, size),
        }
    }

    /// A store to the channel's window at `mcycle`, for either transport (the virtio one
    /// reaches guest RAM through `dma`); `None` faults.
    pub(crate) fn mmio_write(
        &mut self,
        offset: u64,
        size: u32,
        value: u64,
        mcycle: u64,
        dma: &mut Dma<'_>,
    ) -> Option<()> {
        let Some(mut v) = self.virtio.take() else {
            return self.write(offset, size, value, mcycle);
        };
        let result = v.write(offset, size, value, mcycle, self, dma);
        self.virtio = Some(v);
        result
    }

    /// Lets the virtio transport move what waits (delivered responses) into the buffers
    /// the guest posted; nothing for the register interface.
    pub(crate) fn pump(&mut self, mcycle: u64, dma: &mut Dma<'_>) {
        if let Some(mut v) = self.virtio.take() {
            v.work(None, mcycle, self, dma);
            self.virtio = Some(v);
        }
    }

    /// The board's minimum latency.
    pub fn min_latency(&self) -> u64 {
        self.min_latency
    }

    /// The journal of every delivery so far (see the module documentation).
    pub fn journal(&self) -> [u8; 32] {
        self.journal
    }

    /// Responses delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Requests submitted and not yet delivered (the guest's `IN_FLIGHT`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The request `tag`, if it is in flight.
    pub fn request(&self, tag: u64) -> Option<&InFlight> {
        self.in_flight.get(&tag)
    }

    /// The first `mcycle` at which request `tag`'s response may be visible: `min_latency`
    /// after its submission, or later if the host promised so.
    pub fn earliest(&self, tag: u64) -> Option<u64> {
        let promised = self.promised.get(&tag).copied().unwrap_or(0);
        self.in_flight.get(&tag).map(|r| {
            r.submitted_at
                .saturating_add(self.min_latency)
                .max(promised)
        })
    }

    /// The host's promise that request `tag` has no answer before `not_before`: its
    /// earliest (and wall) moves there if that is later. Changes no state.
    pub fn promise(&mut self, tag: u64, not_before: u64) -> Result<(), OffloadError> {
        if !self.in_flight.contains_key(&tag) {
            return Err(OffloadError::UnknownTag(tag));
        }
        if self.answers.contains_key(&tag) {
            return Err(OffloadError::AlreadyAnswered(tag));
        }
        let at = self.promised.entry(tag).or_insert(0);
        *at = (*at).max(not_before);
        Ok(())
    }

    /// Tags of the requests in flight that the host has not answered, in tag order.
    pub fn unanswered(&self) -> impl Iterator<Item = u64> + '_ {
        self.in_flight
            .keys()
            .copied()
            .filter(|t| !self.answers.contains_key(t))
    }

    /// The completions the guest has not popped, oldest first.
    pub fn completions(&self) -> impl Iterator<Item = &Completion> {
        self.completions.iter()
    }

    /// Takes the host's answer to request `tag` while the machine is at `mcycle`. An answer
    /// due now (`visible_at == mcycle`: the machine waits right before it) is delivered at
    /// once.
    pub fn answer(&mut self, tag: u64, answer: Answer, mcycle: u64) -> Result<(), OffloadError> {
        let earliest = self.earliest(tag).ok_or(OffloadError::UnknownTag(tag))?;
        if self.answers.contains_key(&tag) {
            return Err(OffloadError::AlreadyAnswered(tag));
        }
        if answer.visible_at < earliest {
            return Err(OffloadError::TooEarly {
                tag,
                visible_at: answer.visible_at,
                earliest,
            });
        }
        if answer.visible_at < mcycle {
            return Err(OffloadError::Passed {
                visible_at: answer.visible_at,
                mcycle,
            });
        }
        if answer.response.len() as u64 > MAX_RESPONSE {
            return Err(OffloadError::TooLarge(answer.response.len() as u64));
        }
        self.promised.remove(&tag);
        self.answers.insert(tag, answer);
        self.deliver_due(mcycle);
        Ok(())
    }

    /// The cycle the run loop must stop at: the earliest answered delivery, and the wall
    /// of the earliest unanswered request (`earliest - 1`). `u64::MAX` if none.
    pub fn next_stop(&self) -> u64 {
        self.in_flight
            .iter()
            .map(|(&tag, _)| match self.answers.get(&tag) {
                Some(a) => a.visible_at,
                None => self.earliest(tag).expect("in flight") - 1,
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The wall: the cycle the machine cannot run past because an unanswered request's
    /// response could become visible right after it, and the tag of that request.
    pub fn wall(&self) -> Option<(u64, u64)> {
        self.unanswered()
            .map(|tag| (self.earliest(tag).expect("in flight") - 1, tag))
            .min()
    }

    /// The earliest `visible_at` of an answer not delivered yet (a wake-up for WFI).
    pub fn next_delivery(&self) -> u64 {
        self.answers
            .values()
            .map(|a| a.visible_at)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Delivers every answer due at `mcycle`, in (`visible_at`, submission) order. Returns
    /// whether anything was delivered.
    pub fn deliver_due(&mut self, mcycle: u64) -> bool {
        let mut due: Vec<(u64, u64, u64)> = self
            .answers
            .iter()
            .filter(|(_, a)| a.visible_at <= mcycle)
            .map(|(&tag, a)| (a.visible_at, self.in_flight[&tag].seq, tag))
            .collect();
        due.sort_unstable();
        for &(_, _, tag) in &due {
            let answer = self.answers.remove(&tag).expect("due answer");
            let request = self.in_flight.remove(&tag).expect("answered request");
            let mut h = Sha256::new();
            h.update(JOURNAL_DOMAIN);
            h.update(self.journal);
            h.update(tag.to_le_bytes());
            h.update(request.submitted_at.to_le_bytes());
            h.update(answer.visible_at.to_le_bytes());
            h.update(Sha256::digest(&request.request));
            h.update(Sha256::digest(&answer.response));
            h.update(answer.record);
            self.journal = h.finalize().into();
            self.delivered += 1;
            self.completions.push_back(Completion {
                tag,
                visible_at: answer.visible_at,
                response: answer.response,
            });
        }
        !due.is_empty()
    }

    fn tags_in_use(&self) -> usize {
        self.in_flight.len() + self.completions.len()
    }

    fn submit(&mut self, tag: u64, mcycle: u64) {
        let request = std::mem::take(&mut self.pending);
        let overflowed = std::mem::take(&mut self.overflowed);
        self.refused = overflowed || !self.enqueue(tag, request, mcycle);
    }

    /// Submits `request` with `tag` by a store that retired at `mcycle`; returns false
    /// (and drops it) when the tag is in use or [`MAX_JOBS`] tags are.
    pub(crate) fn enqueue(&mut self, tag: u64, request: Vec<u8>, mcycle: u64) -> bool {
        let in_use =
            self.in_flight.contains_key(&tag) || self.completions.iter().any(|c| c.tag == tag);
        if in_use || self.tags_in_use() >= MAX_JOBS {
            return false;
        }
        self.in_flight.insert(
            tag,
            InFlight {
                seq: self.next_seq,
                // The store retires at `mcycle`; the request exists from the next cycle.
                submitted_at: mcycle.saturating_add(1),
                request,
            },
        );
        self.next_seq += 1;
        self.submitted.push_back(tag);
        true
    }

    /// Takes the oldest completion off the queue (the virtio transport streams it to the
    /// guest; its tag is free again).
    pub(crate) fn pop_completion(&mut self) -> Option<Completion> {
        self.cursor = 0;
        self.completions.pop_front()
    }

    fn status(&self) -> u64 {
        let mut s = 0;
        if !self.completions.is_empty() {
            s |= STATUS_COMPLETION;
        }
        if self.refused {
            s |= STATUS_REFUSED;
        }
        s
    }

    fn register(&self, reg: u64) -> u64 {
        let head = self.completions.front();
        match reg {
            reg::ID => ((VERSION as u64) << 32) | MAGIC as u64,
            reg::MIN_LATENCY => self.min_latency,
            reg::REQ_LEN => self.pending.len() as u64,
            reg::STATUS => self.status(),
            reg::IN_FLIGHT => self.in_flight.len() as u64,
            reg::COMP_TAG => head.map_or(0, |c| c.tag),
            reg::COMP_LEN => head.map_or(0, |c| c.response.len() as u64),
            reg::IRQ_ENABLE => self.irq_enable as u64,
            reg::COMP_AT => head.map_or(0, |c| c.visible_at),
            reg::COMP_CURSOR => self.cursor,
            _ => 0,
        }
    }

    /// A load of `size` bytes at `offset`; `None` faults.
    pub fn read(&mut self, offset: u64, size: u32) -> Option<u64> {
        if offset == reg::COMP_DATA {
            if !matches!(size, 1 | 2 | 4 | 8) {
                return None;
            }
            let Some(head) = self.completions.front() else {
                return Some(0);
            };
            let mut value = 0u64;
            for i in 0..size as u64 {
                let byte = head
                    .response
                    .get((self.cursor + i) as usize)
                    .copied()
                    .unwrap_or(0);
                value |= (byte as u64) << (8 * i);
            }
            self.cursor = (self.cursor + size as u64).min(head.response.len() as u64);
            return Some(value);
        }
        let (reg, shift) = locate(offset, size)?;
        let value = self.register(reg);
        Some(if size == 8 {
            value
        } else {
            (value >> shift) & 0xffff_ffff
        })
    }

    /// A store of the low `size` bytes of `value` at `offset` at `mcycle`; `None` faults.
    pub fn write(&mut self, offset: u64, size: u32, value: u64, mcycle: u64) -> Option<()> {
        if offset == reg::REQ_DATA {
            if !matches!(size, 1 | 2 | 4 | 8) {
                return None;
            }
            let room = MAX_REQUEST.saturating_sub(self.pending.len() as u64);
            if room < size as u64 {
                self.overflowed = true;
            }
            let take = room.min(size as u64) as usize;
            self.pending.extend_from_slice(&value.to_le_bytes()[..take]);
            return Some(());
        }
        if size != 8 || offset % 8 != 0 || offset > reg::COMP_CURSOR {
            return None;
        }
        match offset {
            reg::REQ_LEN => {
                self.pending.clear();
                self.overflowed = false;
            }
            reg::SUBMIT => self.submit(value, mcycle),
            reg::COMP_POP => {
                self.completions.pop_front();
                self.cursor = 0;
            }
            reg::IRQ_ENABLE => self.irq_enable = value & 1 != 0,
            reg::COMP_CURSOR => {
                let len = self.completions.front().map_or(0, |c| c.response.len());
                self.cursor = value.min(len as u64);
            }
            _ => {}
        }
        Some(())
    }

    /// The interrupt line: enabled and a completion waiting (the virtio transport:
    /// `InterruptStatus` not zero).
    pub fn interrupt_pending(&self) -> bool {
        match &self.virtio {
            Some(v) => v.interrupt_pending(),
            None => self.irq_enable && !self.completions.is_empty(),
        }
    }

    /// Appends the canonical encoding of the guest-visible state (see the module
    /// documentation: the answers in flight are not part of it).
    pub fn save_state(&self, out: &mut Vec<u8>) {
        put_u64(
            out,
            if self.is_virtio() {
                virtio_console::STATE_MAGIC
            } else {
                STATE_MAGIC
            },
        );
        put_u64(out, self.min_latency);
        put_u8(out, self.irq_enable as u8);
        put_u8(out, self.refused as u8);
        put_u8(out, self.overflowed as u8);
        put_u64(out, self.next_seq);
        put_bytes(out, &self.pending);
        put_u64(out, self.in_flight.len() as u64);
        for (&tag, r) in &self.in_flight {
            put_u64(out, tag);
            put_u64(out, r.seq);
            put_u64(out, r.submitted_at);
            put_bytes(out, &r.request);
        }
        put_u64(out, self.completions.len() as u64);
        for c in &self.completions {
            put_u64(out, c.tag);
            put_u64(out, c.visible_at);
            put_bytes(out, &c.response);
        }
        put_u64(out, self.cursor);
        out.extend_from_slice(&self.journal);
        put_u64(out, self.delivered);
        if let Some(v) = &self.virtio {
            v.save_state(out);
        }
    }

    /// Restores what [`OffloadChannel::save_state`] wrote, refusing what the channel
    /// could never hold. Answers in flight are dropped (the host gives them again).
    pub fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError> {
        let invalid = StateError::Invalid;
        let virtio = match r.u64()? {
            STATE_MAGIC => false,
            virtio_console::STATE_MAGIC => true,
            _ => return Err(invalid("offload channel magic")),
        };
        let min_latency = r.u64()?;
        if min_latency == 0 {
            return Err(invalid("offload min_latency"));
        }
        let mut c = Self::new(min_latency);
        c.irq_enable = r.bool("offload irq enable")?;
        c.refused = r.bool("offload refused flag")?;
        c.overflowed = r.bool("offload overflow flag")?;
        c.next_seq = r.u64()?;
        c.pending = get_bytes(r, MAX_REQUEST, "offload request being written")?;
        if c.overflowed && c.pending.len() as u64 != MAX_REQUEST {
            // Only a full buffer can have overflowed.
            return Err(invalid("offload overflow flag"));
        }
        let jobs = r.u64()?;
        if jobs > MAX_JOBS as u64 {
            return Err(invalid("offload requests in flight"));
        }
        let mut seqs = std::collections::BTreeSet::new();
        for _ in 0..jobs {
            let tag = r.u64()?;
            let seq = r.u64()?;
            let submitted_at = r.u64()?;
            let request = get_bytes(r, MAX_REQUEST, "offload request")?;
            let last = c.in_flight.keys().next_back().copied();
            if last.is_some_and(|l| l >= tag) || seq >= c.next_seq || !seqs.insert(seq) {
                return Err(invalid("offload request in flight"));
            }
            if submitted_at.checked_add(min_latency).is_none() {
                return Err(invalid("offload submission cycle"));
            }
            c.in_flight.insert(
                tag,
                InFlight {
                    seq,
                    submitted_at,
                    request,
                },
            );
        }
        let completions = r.u64()?;
        if completions + jobs > MAX_JOBS as u64 {
            return Err(invalid("offload completions"));
        }
        for _ in 0..completions {
            let tag = r.u64()?;
            let visible_at = r.u64()?;
            let response = get_bytes(r, MAX_RESPONSE, "offload response")?;
            if c.in_flight.contains_key(&tag) || c.completions.iter().any(|x| x.tag == tag) {
                return Err(invalid("offload completion tag"));
            }
            c.completions.push_back(Completion {
                tag,
                visible_at,
                response,
            });
        }
        c.cursor = r.u64()?;
        let head_len = c.completions.front().map_or(0, |h| h.response.len() as u64);
        if c.cursor > head_len {
            return Err(invalid("offload read cursor"));
        }
        c.journal.copy_from_slice(r.bytes(32)?);
        c.delivered = r.u64()?;
        if virtio {
            let mut v = VirtioConsole::new();
            v.load_state(r)?;
            c.virtio = Some(Box::new(v));
        }
        *self = c;
        Ok(())
    }
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

fn locate(offset: u64, size: u32) -> Option<(u64, u32)> {
    match size {
        8 if offset % 8 == 0 => Some((offset, 0)),
        4 if offset % 4 == 0 => Some((offset & !7, ((offset & 4) * 8) as u32)),
        _ => None,
    }
}

impl Device for OffloadChannel {
    fn name(&self) -> &'static str {
        "offload"
    }

    fn read(&mut self, offset: u64, size: u32, _cx: &mut MmioContext<'_>) -> Option<u64> {
        self.mmio_read(offset, size)
    }

    /// The register interface only: the virtio transport's stores reach guest RAM, which
    /// [`MmioContext`] does not carry (the bus calls `mmio_write` for both), so they fault
    /// here.
    fn write(
        &mut self,
        offset: u64,
        size: u32,
        value: u64,
        cx: &mut MmioContext<'_>,
    ) -> Option<()> {
        if self.is_virtio() {
            return None;
        }
        OffloadChannel::write(self, offset, size, value, cx.mcycle)
    }

    fn save_state(&self, out: &mut Vec<u8>) {
        OffloadChannel::save_state(self, out)
    }

    fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError> {
        OffloadChannel::load_state(self, r)
    }

    fn device_tree_node(&self, w: &mut FdtWriter, base: u64, size: u64, irq: Option<u32>) {
        if let (true, Some(irq)) = (self.is_virtio(), irq) {
            return VirtioConsole::device_tree_node(w, base, size, irq);
        }
        w.node(&format!("offload@{base:x}"), |w| {
            w.property_string("compatible", "cmbuild,offload-channel-v1");
            w.property_cells("reg", &fdt::reg_cells(base, size));
            if let Some(irq) = irq {
                w.property_u32("interrupts", irq);
                w.property_u32("interrupt-parent", fdt::PHANDLE_PLIC);
            }
        });
    }

    fn interrupt_line(&self) -> bool {
        self.interrupt_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(c: &mut OffloadChannel, bytes: &[u8], tag: u64, mcycle: u64) {
        for &b in bytes {
            c.write(reg::REQ_DATA, 1, b as u64, mcycle).unwrap();
        }
        c.write(reg::SUBMIT, 8, tag, mcycle).unwrap();
    }

    fn answer(visible_at: u64, response: &[u8]) -> Answer {
        Answer {
            visible_at,
            response: response.to_vec(),
            record: [7; 32],
        }
    }

    #[test]
    fn a_promise_moves_the_wall_and_changes_no_state() {
        let mut c = OffloadChannel::new(100);
        submit(&mut c, b"job", 5, 9);
        submit(&mut c, b"other", 6, 20);
        let mut before = Vec::new();
        c.save_state(&mut before);
        assert_eq!(c.wall(), Some((109, 5)));
        assert_eq!(c.promise(9, 500), Err(OffloadError::UnknownTag(9)));
        c.promise(5, 400).unwrap();
        // The wall is now the other request's.
        assert_eq!(c.earliest(5), Some(400));
        assert_eq!(c.wall(), Some((120, 6)));
        c.promise(6, 300).unwrap();
        assert_eq!((c.wall(), c.next_stop()), (Some((299, 6)), 299));
        // A promise never moves a wall back.
        c.promise(6, 150).unwrap();
        assert_eq!(c.earliest(6), Some(300));
        // An answer earlier than the promise is refused: the machine may have passed it.
        assert_eq!(
            c.answer(6, answer(299, b"r"), 50),
            Err(OffloadError::TooEarly {
                tag: 6,
                visible_at: 299,
                earliest: 300
            })
        );
        let mut after = Vec::new();
        c.save_state(&mut after);
        assert_eq!(before, after, "a promise is not state");
        c.answer(6, answer(300, b"r"), 50).unwrap();
        assert_eq!(c.promise(6, 301), Err(OffloadError::AlreadyAnswered(6)));
        assert!(c.deliver_due(300));
        assert_eq!(c.wall(), Some((399, 5)));
    }

    #[test]
    fn a_request_is_answered_at_the_named_cycle_only() {
        let mut c = OffloadChannel::new(100);
        assert_eq!(c.read(reg::ID, 4), Some(MAGIC as u64));
        submit(&mut c, b"job", 5, 9);
        assert_eq!(c.submitted.back(), Some(&5));
        assert_eq!(c.request(5).unwrap().request, b"job");
        assert_eq!(c.earliest(5), Some(110));
        assert_eq!(c.wall(), Some((109, 5)));
        assert_eq!(c.next_stop(), 109);
        assert_eq!(
            c.answer(5, answer(109, b"r"), 50),
            Err(OffloadError::TooEarly {
                tag: 5,
                visible_at: 109,
                earliest: 110
            })
        );
        c.answer(5, answer(200, b"result"), 50).unwrap();
        assert_eq!(
            c.answer(5, answer(200, b"x"), 50),
            Err(OffloadError::AlreadyAnswered(5))
        );
        assert_eq!((c.wall(), c.next_stop()), (None, 200));
        assert!(!c.deliver_due(199));
        assert_eq!(c.read(reg::STATUS, 8), Some(0));
        assert!(c.deliver_due(200));
        assert_eq!(c.read(reg::STATUS, 8), Some(STATUS_COMPLETION));
        assert_eq!(c.read(reg::COMP_TAG, 8), Some(5));
        assert_eq!(c.read(reg::COMP_LEN, 8), Some(6));
        assert_eq!(c.read(reg::COMP_AT, 8), Some(200));
        assert_eq!(
            c.read(reg::COMP_DATA, 4),
            Some(u32::from_le_bytes(*b"resu") as u64)
        );
        assert_eq!(
            c.read(reg::COMP_DATA, 4),
            Some(u16::from_le_bytes(*b"lt") as u64)
        );
        assert!(!c.interrupt_pending());
        c.write(reg::IRQ_ENABLE, 8, 1, 300).unwrap();
        assert!(c.interrupt_pending());
        c.write(reg::COMP_POP, 8, 0, 301).unwrap();
        assert!(!c.interrupt_pending());
        assert_eq!(c.delivered(), 1);
        assert_ne!(c.journal(), [0; 32]);
    }

    #[test]
    fn refusals_and_the_state_round_trip() {
        let mut c = OffloadChannel::new(1);
        submit(&mut c, b"a", 1, 0);
        submit(&mut c, b"b", 1, 3);
        assert_eq!(c.read(reg::STATUS, 8), Some(STATUS_REFUSED));
        assert_eq!(c.read(reg::IN_FLIGHT, 8), Some(1));
        submit(&mut c, b"c", 2, 4);
        c.write(reg::REQ_DATA, 8, 0x1122, 4).unwrap();
        c.answer(2, answer(6, b"two"), 5).unwrap();
        c.deliver_due(6);
        let mut out = Vec::new();
        c.save_state(&mut out);
        let mut d = OffloadChannel::new(9);
        let mut r = Reader::new(&out);
        d.load_state(&mut r).unwrap();
        assert!(r.remaining().is_empty());
        let mut again = Vec::new();
        d.save_state(&mut again);
        assert_eq!(out, again);
        // Every truncation is refused.
        for len in 0..out.len() {
            let mut d = OffloadChannel::new(1);
            assert!(
                d.load_state(&mut Reader::new(&out[..len])).is_err(),
                "{len}"
            );
        }
    }

    #[test]
    fn corrupted_state_is_refused_or_loads_canonically() {
        let mut c = OffloadChannel::new(5);
        submit(&mut c, b"ab", 1, 0);
        submit(&mut c, b"cd", 2, 1);
        c.answer(2, answer(9, b"xyz"), 3).unwrap();
        c.deliver_due(9);
        c.read(reg::COMP_DATA, 1).unwrap();
        c.write(reg::REQ_DATA, 2, 0x4142, 10).unwrap();
        let mut out = Vec::new();
        c.save_state(&mut out);
        for at in 0..out.len() {
            for bit in [0, 3, 7] {
                let mut bytes = out.clone();
                bytes[at] ^= 1 << bit;
                let mut d = OffloadChannel::new(1);
                let mut r = Reader::new(&bytes);
                if d.load_state(&mut r).is_ok() && r.remaining().is_empty() {
                    // What loads is exactly what saving it gives back.
                    let mut again = Vec::new();
                    d.save_state(&mut again);
                    assert_eq!(again, bytes, "byte {at} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn an_answer_not_yet_visible_is_not_state() {
        let mut a = OffloadChannel::new(10);
        submit(&mut a, b"x", 3, 0);
        let b = a.clone();
        a.answer(3, answer(50, b"y"), 2).unwrap();
        let (mut sa, mut sb) = (Vec::new(), Vec::new());
        a.save_state(&mut sa);
        b.save_state(&mut sb);
        assert_eq!(sa, sb);
    }
}
