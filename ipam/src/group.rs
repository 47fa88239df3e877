//! Group commit of assignments on one node: concurrent requests queue up, and whoever
//! finds the writer free takes everything queued to [`Ipam::assign_many`] at once. While
//! one batch writes, the next one gathers, so a burst of pods becomes a few block writes
//! instead of one compare-and-swap race per pod.
//!
//! A writer that starts while other requests are known to be on their way (announced
//! with [`GroupCommit::arriving`], still doing their own reads) waits a few milliseconds
//! ([`GATHER`]) for them to join its batch; a lone request never waits.
//!
//! The writer lock is also what the agent holds for its other IPAM writes (release, GC),
//! so they never race the node's own assignments.

use crate::datastore::DatastoreError;
use crate::error::IpamError;
use crate::ipam::{AssignRequest, Assignment, Ipam};
use crate::model::KIND_BLOCK;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{oneshot, MutexGuard, Notify};

/// The longest a writer waits for announced requests to join its batch.
pub const GATHER: Duration = Duration::from_millis(5);

type Reply = oneshot::Sender<Result<Assignment, IpamError>>;

/// The assignment queue of one node.
pub struct GroupCommit {
    ipam: Arc<Ipam>,
    node: String,
    queue: Mutex<Vec<(AssignRequest, Reply)>>,
    writer: tokio::sync::Mutex<()>,
    /// Requests announced and not queued yet.
    arriving: Arc<AtomicUsize>,
    queued_one: Arc<Notify>,
}

/// A request on its way to [`GroupCommit::assign`] (see [`GroupCommit::arriving`]);
/// dropping it unused (the request failed before) withdraws the announcement.
pub struct Arrival {
    arriving: Arc<AtomicUsize>,
    queued_one: Arc<Notify>,
    done: bool,
}

impl Arrival {
    fn arrive(&mut self) {
        if !self.done {
            self.done = true;
            self.arriving.fetch_sub(1, Ordering::SeqCst);
            self.queued_one.notify_waiters();
        }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.arrive();
    }
}

impl GroupCommit {
    pub fn new(ipam: Arc<Ipam>, node: impl Into<String>) -> Self {
        GroupCommit {
            ipam,
            node: node.into(),
            queue: Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(()),
            arriving: Arc::new(AtomicUsize::new(0)),
            queued_one: Arc::new(Notify::new()),
        }
    }

    /// Announces a request that will reach [`GroupCommit::assign_arriving`] soon (a CNI
    /// ADD that is still validating and reading): a writer starting meanwhile waits for
    /// it, up to [`GATHER`].
    pub fn arriving(&self) -> Arrival {
        self.arriving.fetch_add(1, Ordering::SeqCst);
        Arrival {
            arriving: self.arriving.clone(),
            queued_one: self.queued_one.clone(),
            done: false,
        }
    }

    pub fn ipam(&self) -> &Arc<Ipam> {
        &self.ipam
    }

    /// Waits until no announced request is still on its way, at most [`GATHER`].
    async fn gather(&self) {
        let deadline = tokio::time::Instant::now() + GATHER;
        loop {
            let notified = self.queued_one.notified();
            if self.arriving.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Requests waiting for a writer.
    pub fn queued(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Holds off every batch while the guard lives (for the node's other IPAM writes).
    pub async fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    /// Assigns through the queue: the same answer [`Ipam::assign`] gives.
    pub async fn assign(&self, request: AssignRequest) -> Result<Assignment, IpamError> {
        self.assign_arriving(self.arriving(), request).await
    }

    /// [`GroupCommit::assign`] of a request announced with [`GroupCommit::arriving`].
    pub async fn assign_arriving(
        &self,
        mut arrival: Arrival,
        request: AssignRequest,
    ) -> Result<Assignment, IpamError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((request, tx));
        arrival.arrive();
        {
            let _writer = self.writer.lock().await;
            self.gather().await;
            // Whatever queued meanwhile, ours included unless an earlier writer took it.
            let batch =
                std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
            if !batch.is_empty() {
                let (requests, replies): (Vec<AssignRequest>, Vec<Reply>) =
                    batch.into_iter().unzip();
                let results = self.ipam.assign_many(&self.node, &requests).await;
                for (reply, result) in replies.into_iter().zip(results) {
                    // A requester that gave up has gone; nothing to tell it.
                    let _ = reply.send(result);
                }
            }
        }
        rx.await.unwrap_or_else(|_| {
            // The writer that took our request was cancelled before answering.
            Err(IpamError::Store {
                op: "assign",
                kind: KIND_BLOCK,
                name: "(a batch of assignments)".to_string(),
                source: Box::new(DatastoreError::Unavailable {
                    detail: "the batch this request was in was abandoned".to_string(),
                }),
            })
        })
    }
}
