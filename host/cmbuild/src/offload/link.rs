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

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::Scope;

use cmbuild_machine::machine::Machine;

use super::blobs::BlobStore;
use super::cache::Computed;
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
    /// The job is computed.
    Done(Box<Dispatch>, Result<(Sha256, Computed), ServiceError>),
}

/// A parent machine's link to the run's job service.
pub struct Link<'scope, 'env> {
    parent: Parent,
    service: &'env Service<'env>,
    blobs: &'env BlobStore,
    scope: &'scope Scope<'scope, 'env>,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    outstanding: usize,
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
            parent,
            service,
            blobs,
            scope,
            events_tx,
            events_rx,
            outstanding: 0,
        }
    }

    /// Takes request `tag` the machine just submitted.
    pub fn submit(&mut self, machine: &mut Machine, tag: u64) -> Result<(), LinkError> {
        let channel = machine.offload().ok_or(LinkError::NoRequest(tag))?;
        let request = channel.request(tag).ok_or(LinkError::NoRequest(tag))?;
        let (submitted_at, body) = (request.submitted_at, request.request.clone());
        match self.parent.request(tag, submitted_at, &body, self.blobs)? {
            Step::Answer(answer) => machine.offload_answer(tag, answer)?,
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
                    let computed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        service.compute(&dispatch, &bound)
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
                let not_before = submitted_at + self.parent.latency() + cycles;
                machine.offload_promise(tag, not_before)?;
            }
            Event::Done(dispatch, computed) => {
                self.outstanding -= 1;
                let (action, computed) = computed?;
                let answer = self
                    .parent
                    .finish(&dispatch, action, &computed, self.blobs)?;
                machine.offload_answer(dispatch.tag, answer)?;
            }
        }
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
        if self.outstanding == 0 {
            return Err(LinkError::Orphan);
        }
        let event = self.events_rx.recv().map_err(|_| LinkError::Orphan)?;
        self.apply(machine, event)?;
        self.drain(machine)
    }

    /// Every job answered, in delivery order.
    pub fn records(&self) -> Vec<JobRecord> {
        self.parent.records()
    }
}
