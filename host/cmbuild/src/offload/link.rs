//! One parent machine's side of the channel while it runs: its requests go to
//! [`Parent`] (answered at once, or computed by the [`Service`] on a thread of the run's
//! scope) and the answers go back into the machine, whenever they arrive: their cycles
//! were fixed by [`Parent`], so arrival order changes nothing the guest sees.

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

type Done = (Dispatch, Result<(Sha256, Computed), ServiceError>);

/// A parent machine's link to the run's job service.
pub struct Link<'scope, 'env> {
    parent: Parent,
    service: &'env Service<'env>,
    blobs: &'env BlobStore,
    scope: &'scope Scope<'scope, 'env>,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
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
        let (done_tx, done_rx) = channel();
        Link {
            parent,
            service,
            blobs,
            scope,
            done_tx,
            done_rx,
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
                let (service, done) = (self.service, self.done_tx.clone());
                self.scope.spawn(move || {
                    let computed = service.compute(&dispatch);
                    // The receiver outlives every job unless the run failed already.
                    let _ = done.send((*dispatch, computed));
                });
            }
        }
        Ok(())
    }

    fn apply(
        &mut self,
        machine: &mut Machine,
        (dispatch, computed): Done,
    ) -> Result<(), LinkError> {
        self.outstanding -= 1;
        let (action, computed) = computed?;
        let answer = self
            .parent
            .finish(&dispatch, action, &computed, self.blobs)?;
        machine.offload_answer(dispatch.tag, answer)?;
        Ok(())
    }

    /// Hands the machine every answer computed so far.
    pub fn drain(&mut self, machine: &mut Machine) -> Result<(), LinkError> {
        while let Ok(done) = self.done_rx.try_recv() {
            self.apply(machine, done)?;
        }
        Ok(())
    }

    /// The machine waits at a wall: blocks until one more answer is computed.
    pub fn wait(&mut self, machine: &mut Machine) -> Result<(), LinkError> {
        if self.outstanding == 0 {
            return Err(LinkError::Orphan);
        }
        let done = self.done_rx.recv().map_err(|_| LinkError::Orphan)?;
        self.apply(machine, done)?;
        self.drain(machine)
    }

    /// Every job answered, in delivery order.
    pub fn records(&self) -> Vec<JobRecord> {
        self.parent.records()
    }
}
