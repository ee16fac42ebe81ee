//! One parent machine's side of the channel while it runs: its requests go to
//! [`Parent`] (answered at once, or computed by the [`Service`] on a thread of the run's
//! scope) and the answers go back into the machine, whenever they arrive: their cycles
//! were fixed by [`Parent`], so arrival order changes nothing the guest sees.
//!
//! While a job's sibling runs, its progress `c` comes back as a promise that the answer
//! is not visible before `T + L + c` (it is at `T + L + C`, `C >= c`): the parent runs on
//! up to there instead of waiting at `T + L`, and submits the jobs it finds meanwhile, so
//! that jobs which overlap in the parent's time run at the same time on the host. Promises
//! change no state (`devices/offload.rs`, "Timing").
//!
//! A job whose rustc announces its `.rmeta` gets its `meta` answer at that point; its
//! result then answers the `rest` request the wrapper submits, whichever comes first on
//! the host (the result is kept until the parent asks; the parent's request waits for the
//! result, with the sibling's bounds passed on to it).
//!
//! A scout's link ([`Parent::scout`], `super::scout`) delivers every answer at the first
//! cycle the scout's channel accepts it, and gives no promises from progress: the scout
//! promises for itself.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::Scope;

use cmbuild_machine::machine::Machine;

use super::blobs::BlobStore;
use super::cache::{Computed, MetaPoint};
use super::parent::{Dispatch, JobRecord, Parent, ParentError, Step};
use super::service::{Service, ServiceError};
use cmbuild_store::sha256::Sha256;

/// Errors of the host while serving a parent (each fails the run).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// the machine reported request {0}, which its channel does not hold
    #[error("the machine reported request {0}, which its channel does not hold")]
    NoRequest(u64),
    /// the machine refused the host's answer
    #[error("the machine refused the host's answer")]
    Answer(#[from] cmbuild_machine::devices::offload::OffloadError),
    /// {0}
    #[error(transparent)]
    Parent(#[from] ParentError),
    /// a job could not be computed
    #[error("a job could not be computed")]
    Service(#[from] ServiceError),
    /// the machine waits for an answer no job will give
    #[error("the machine waits for an answer no job will give")]
    Orphan,
}

/// What a job's thread reports, in this order: bounds while its sibling runs, then the end.
enum Event {
    /// The job's answer is not visible before `submitted_at + L + cycles`.
    Bound {
        tag: u64,
        submitted_at: u64,
        cycles: u64,
    },
    /// The job reached its metadata point.
    Meta {
        tag: u64,
        submitted_at: u64,
        point: Box<MetaPoint>,
    },
    /// The job is computed.
    Done(Box<Dispatch>, Result<(Sha256, Computed), ServiceError>),
}

/// A computed job whose result waits for the parent's `rest` request.
type Parked = (Box<Dispatch>, Sha256, Computed);

/// A parent machine's link to the run's job service.
pub struct Link<'scope, 'env> {
    parent: Parent,
    service: &'env Service<'env>,
    blobs: &'env BlobStore,
    scope: &'scope Scope<'scope, 'env>,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    outstanding: usize,
    /// Pipelined jobs computed before the parent asked for their rest, by request tag.
    parked: std::collections::BTreeMap<u64, Parked>,
    /// Answers handed to the machine so far.
    answered: u64,
}

impl<'scope, 'env> Link<'scope, 'env> {
    /// A link for `parent`, computing jobs with `service` on threads of `scope`.
    pub fn new(
        parent: Parent,
        service: &'env Service<'env>,
        blobs: &'env BlobStore,
        scope: &'scope Scope<'scope, 'env>,
    ) -> Self {
        let (events_tx, events_rx) = channel();
        Link {
            answered: 0,
            parent,
            service,
            blobs,
            scope,
            events_tx,
            events_rx,
            outstanding: 0,
            parked: Default::default(),
        }
    }

    /// Takes request `tag` the machine just submitted.
    pub fn submit(&mut self, machine: &mut Machine, tag: u64) -> Result<(), LinkError> {
        let channel = machine.offload().ok_or(LinkError::NoRequest(tag))?;
        let request = channel.request(tag).ok_or(LinkError::NoRequest(tag))?;
        let (submitted_at, body) = (request.submitted_at, request.request.clone());
        match self.parent.request(tag, submitted_at, &body, self.blobs)? {
            Step::Answer(answer) => {
                machine.offload_answer(tag, answer)?;
                self.answered += 1;
            }
            Step::Rest { of, promise } => {
                if let Some((dispatch, action, computed)) = self.parked.remove(&of) {
                    self.answer(machine, &dispatch, action, &computed)?;
                } else if !self.parent.is_scout() {
                    machine.offload_promise(promise.0, promise.1)?;
                }
            }
            Step::Dispatch(dispatch) => {
                self.outstanding += 1;
                let (service, events) = (self.service, self.events_tx.clone());
                self.scope.spawn(move || {
                    let (tag, submitted_at) = (dispatch.tag, dispatch.submitted_at);
                    // The receiver outlives every job unless the run failed already.
                    let bound = |cycles| {
                        let _ = events.send(Event::Bound {
                            tag,
                            submitted_at,
                            cycles,
                        });
                    };
                    // A panic must end the run with an error, not leave it waiting.
                    let meta = |point: MetaPoint| {
                        let _ = events.send(Event::Meta {
                            tag,
                            submitted_at,
                            point: Box::new(point),
                        });
                    };
                    let computed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        service.compute(&dispatch, &bound, &meta)
                    }))
                    .unwrap_or(Err(ServiceError::Panicked));
                    let _ = events.send(Event::Done(dispatch, computed));
                });
            }
        }
        Ok(())
    }

    fn apply(&mut self, machine: &mut Machine, event: Event) -> Result<(), LinkError> {
        match event {
            Event::Bound {
                tag,
                submitted_at,
                cycles,
            } => {
                let promise = self.parent.promise(tag, submitted_at, cycles);
                if let (Some((tag, not_before)), false) = (promise, self.parent.is_scout()) {
                    machine.offload_promise(tag, not_before)?;
                }
            }
            Event::Meta {
                tag,
                submitted_at,
                point,
            } => {
                let answer = self.parent.meta(tag, submitted_at, &point, self.blobs)?;
                self.deliver(machine, tag, answer)?;
            }
            Event::Done(dispatch, computed) => {
                self.outstanding -= 1;
                let (action, computed) = computed?;
                if self.parent.awaits_rest(dispatch.tag) {
                    self.parked
                        .insert(dispatch.tag, (dispatch, action, computed));
                } else {
                    self.answer(machine, &dispatch, action, &computed)?;
                }
            }
        }
        Ok(())
    }

    /// Answers a computed job (its request, or its `rest` request).
    fn answer(
        &mut self,
        machine: &mut Machine,
        dispatch: &Dispatch,
        action: Sha256,
        computed: &Computed,
    ) -> Result<(), LinkError> {
        let (tag, answer) = self.parent.finish(dispatch, action, computed, self.blobs)?;
        self.deliver(machine, tag, answer)
    }

    /// Hands the machine a job's answer: at its cycle, or for a scout at the first cycle
    /// its channel accepts (no earlier than its earliest, not before the machine's cycle).
    fn deliver(
        &mut self,
        machine: &mut Machine,
        tag: u64,
        mut answer: cmbuild_machine::devices::offload::Answer,
    ) -> Result<(), LinkError> {
        if self.parent.is_scout() {
            let channel = machine.offload().ok_or(LinkError::NoRequest(tag))?;
            let earliest = channel.earliest(tag).ok_or(LinkError::NoRequest(tag))?;
            answer.visible_at = earliest.max(machine.mcycle());
        }
        machine.offload_answer(tag, answer)?;
        self.answered += 1;
        Ok(())
    }

    /// Hands the machine every answer and promise so far.
    pub fn drain(&mut self, machine: &mut Machine) -> Result<(), LinkError> {
        while let Ok(event) = self.events_rx.try_recv() {
            self.apply(machine, event)?;
        }
        Ok(())
    }

    /// The machine waits at a wall: blocks until one more answer or promise comes.
    pub fn wait(&mut self, machine: &mut Machine) -> Result<(), LinkError> {
        self.wait_up_to(machine, None)
    }

    /// [`Link::wait`] for at most `timeout` (nothing coming is no error).
    pub fn wait_for(
        &mut self,
        machine: &mut Machine,
        timeout: std::time::Duration,
    ) -> Result<(), LinkError> {
        self.wait_up_to(machine, Some(timeout))
    }

    fn wait_up_to(
        &mut self,
        machine: &mut Machine,
        timeout: Option<std::time::Duration>,
    ) -> Result<(), LinkError> {
        use std::sync::mpsc::RecvTimeoutError;
        if self.outstanding == 0 {
            return Err(LinkError::Orphan);
        }
        let event = match timeout {
            None => self
                .events_rx
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
            Some(timeout) => self.events_rx.recv_timeout(timeout),
        };
        match event {
            Ok(event) => self.apply(machine, event)?,
            Err(RecvTimeoutError::Timeout) => return Ok(()),
            Err(RecvTimeoutError::Disconnected) => return Err(LinkError::Orphan),
        }
        self.drain(machine)
    }

    /// Answers handed to the machine so far.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Jobs dispatched and not computed yet, or computed and waiting for their `rest`
    /// request.
    pub fn pending(&self) -> usize {
        self.outstanding + self.parked.len()
    }

    /// Every job answered, in delivery order.
    pub fn records(&self) -> Vec<JobRecord> {
        self.parent.records()
    }
}
